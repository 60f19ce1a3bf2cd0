//! Headers-exchange matching: a binding's arguments against a message's `headers` table, with
//! RabbitMQ's rules (`rabbit_exchange_type_headers` and `mc_amqpl:routing_headers` in 4.x):
//!
//! - `x-match` is `all` (the default), `any`, `all-with-x` or `any-with-x`. Any other value or
//!   type routes as `all` ([`validate`] refuses them at bind time, as RabbitMQ does).
//! - In `all`/`any`, binding arguments whose name starts with `x-` are not matched. In the
//!   `-with-x` modes they are, except `x-match` itself. Message headers starting with `x-` take
//!   part like any other.
//! - `all` with nothing left to match matches every message; `any` with nothing left matches
//!   none.
//! - A binding argument of type void matches when the header is present, whatever its value.
//! - Otherwise the values must be equal as Erlang terms (`=:=`) once the types are dropped:
//!   integers of any width (and timestamps) equal by value, `float` and `double` equal by
//!   value, but an integer never equals a float (`1` vs `1.0`); long strings, short strings
//!   and byte arrays equal by bytes; booleans only equal booleans; decimals need the same
//!   scale and digits; a void header equals nothing. Inside arrays and tables the types are
//!   kept, so `[long 1]` and `[signedint 1]` differ, and an empty array equals an empty table
//!   (both are the empty list in Erlang).
//! - RabbitMQ multiplies a message's timestamp header by 1000 (seconds to the milliseconds of
//!   its internal message container) before matching, but not the binding's: a binding value
//!   `5000` (any integer type) matches a timestamp header `5`, and a timestamp binding value
//!   `5` does not. Kept for compatibility.
//!
//! Nested tables compare key by key: RabbitMQ compares them in wire order, which the parsed
//! `FieldTable` (a sorted map) no longer has; the difference only shows for a nested table
//! whose publisher sent keys out of order.

use amqp_codec::{AMQPValue, FieldTable};

use super::routing::InvalidBinding;

/// How a binding's arguments are matched, read from its `x-match` once at bind time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct MatchMode {
    /// `any`: one matching argument is enough; otherwise all must match.
    any: bool,
    /// `-with-x`: `x-` arguments (except `x-match`) are matched too.
    with_x: bool,
}

impl MatchMode {
    pub(crate) fn of(arguments: &FieldTable) -> Self {
        let (any, with_x) = match x_match(arguments) {
            Some(XMatch::Str(b"any")) => (true, false),
            Some(XMatch::Str(b"any-with-x")) => (true, true),
            Some(XMatch::Str(b"all-with-x")) => (false, true),
            _ => (false, false),
        };
        Self { any, with_x }
    }
}

enum XMatch<'a> {
    Str(&'a [u8]),
    OtherType(&'a AMQPValue),
}

fn x_match(arguments: &FieldTable) -> Option<XMatch<'_>> {
    Some(match arguments.inner().get("x-match")? {
        AMQPValue::LongString(s) => XMatch::Str(s.as_bytes()),
        // A short string cannot arrive in a field table on the wire (RabbitMQ reads 's' as a
        // short int); one built in code means the same text.
        AMQPValue::ShortString(s) => XMatch::Str(s.as_str().as_bytes()),
        other => XMatch::OtherType(other),
    })
}

/// RabbitMQ's `validate_binding` for headers exchanges.
pub(crate) fn validate(arguments: &FieldTable) -> Result<(), InvalidBinding> {
    match x_match(arguments) {
        None => Ok(()),
        Some(XMatch::Str(b"all" | b"any" | b"all-with-x" | b"any-with-x")) => Ok(()),
        Some(XMatch::Str(other)) => Err(InvalidBinding(format!(
            "Invalid x-match field value {:?}; expected all, any, all-with-x, or any-with-x",
            String::from_utf8_lossy(other)
        ))),
        Some(XMatch::OtherType(value)) => Err(InvalidBinding(format!(
            "Invalid x-match field type {:?} (value {value:?}); expected longstr",
            value.get_type()
        ))),
    }
}

/// Whether a message with `headers` matches a binding with `arguments`.
pub(crate) fn matches(
    arguments: &FieldTable,
    mode: MatchMode,
    headers: Option<&FieldTable>,
) -> bool {
    let headers = headers.map(FieldTable::inner);
    for (key, expected) in arguments {
        let key = key.as_str();
        let skipped = if mode.with_x {
            key == "x-match"
        } else {
            key.starts_with("x-")
        };
        if skipped {
            continue;
        }
        let hit = match headers.and_then(|h| h.get(key)) {
            None => false,
            Some(_) if matches!(expected, AMQPValue::Void) => true,
            Some(found) => routing_eq(expected, found),
        };
        if mode.any && hit {
            return true;
        }
        if !mode.any && !hit {
            return false;
        }
    }
    !mode.any
}

/// A top-level value as the Erlang term RabbitMQ compares (types dropped).
enum Term<'a> {
    Int(i128),
    Float(f64),
    Bytes(&'a [u8]),
    Bool(bool),
    Decimal(u8, u32),
    Array(&'a [AMQPValue]),
    Table(&'a FieldTable),
    Undefined,
}

impl<'a> Term<'a> {
    /// `timestamp_scale` is 1 for binding values and 1000 for message headers.
    fn of(value: &'a AMQPValue, timestamp_scale: i128) -> Self {
        use AMQPValue as V;
        match value {
            V::Boolean(b) => Term::Bool(*b),
            V::ShortShortInt(n) => Term::Int((*n).into()),
            V::ShortShortUInt(n) => Term::Int((*n).into()),
            V::ShortInt(n) => Term::Int((*n).into()),
            V::ShortUInt(n) => Term::Int((*n).into()),
            V::LongInt(n) => Term::Int((*n).into()),
            V::LongUInt(n) => Term::Int((*n).into()),
            V::LongLongInt(n) => Term::Int((*n).into()),
            V::Timestamp(n) => Term::Int(i128::from(*n) * timestamp_scale),
            V::Float(f) => Term::Float((*f).into()),
            V::Double(f) => Term::Float(*f),
            V::DecimalValue(d) => Term::Decimal(d.scale, d.value),
            V::ShortString(s) => Term::Bytes(s.as_str().as_bytes()),
            V::LongString(s) => Term::Bytes(s.as_bytes()),
            V::ByteArray(b) => Term::Bytes(b.as_slice()),
            V::FieldArray(a) => Term::Array(a.as_slice()),
            V::FieldTable(t) => Term::Table(t),
            V::Void => Term::Undefined,
        }
    }
}

/// `=:=` between a binding value and a message header value.
fn routing_eq(binding: &AMQPValue, header: &AMQPValue) -> bool {
    match (Term::of(binding, 1), Term::of(header, 1000)) {
        (Term::Int(a), Term::Int(b)) => a == b,
        // Bitwise: `=:=` tells 0.0 from -0.0 (OTP 27), and Erlang has no NaN.
        (Term::Float(a), Term::Float(b)) => a.to_bits() == b.to_bits(),
        (Term::Bytes(a), Term::Bytes(b)) => a == b,
        (Term::Bool(a), Term::Bool(b)) => a == b,
        (Term::Decimal(s1, v1), Term::Decimal(s2, v2)) => s1 == s2 && v1 == v2,
        (Term::Array(a), Term::Array(b)) => same_values(a, b),
        (Term::Table(a), Term::Table(b)) => same_table(a, b),
        // Both are the empty list in Erlang.
        (Term::Array(a), Term::Table(t)) | (Term::Table(t), Term::Array(a)) => {
            a.is_empty() && t.inner().is_empty()
        }
        _ => false,
    }
}

/// Typed equality, as RabbitMQ compares `{Type, Value}` pairs inside arrays and tables, and
/// whole argument tables when deciding whether two bindings are the same binding.
pub(crate) fn same_table(a: &FieldTable, b: &FieldTable) -> bool {
    let (a, b) = (a.inner(), b.inner());
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
}

fn same_values(a: &[AMQPValue], b: &[AMQPValue]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y))
}

fn same_value(a: &AMQPValue, b: &AMQPValue) -> bool {
    use AMQPValue as V;
    match (a, b) {
        (V::Boolean(x), V::Boolean(y)) => x == y,
        (V::ShortShortInt(x), V::ShortShortInt(y)) => x == y,
        (V::ShortShortUInt(x), V::ShortShortUInt(y)) => x == y,
        (V::ShortInt(x), V::ShortInt(y)) => x == y,
        (V::ShortUInt(x), V::ShortUInt(y)) => x == y,
        (V::LongInt(x), V::LongInt(y)) => x == y,
        (V::LongUInt(x), V::LongUInt(y)) => x == y,
        (V::LongLongInt(x), V::LongLongInt(y)) => x == y,
        (V::Timestamp(x), V::Timestamp(y)) => x == y,
        (V::Float(x), V::Float(y)) => x.to_bits() == y.to_bits(),
        (V::Double(x), V::Double(y)) => x.to_bits() == y.to_bits(),
        (V::DecimalValue(x), V::DecimalValue(y)) => x == y,
        (V::ByteArray(x), V::ByteArray(y)) => x.as_slice() == y.as_slice(),
        (V::ShortString(_) | V::LongString(_), V::ShortString(_) | V::LongString(_)) => {
            string_bytes(a) == string_bytes(b)
        }
        (V::FieldArray(x), V::FieldArray(y)) => same_values(x.as_slice(), y.as_slice()),
        (V::FieldTable(x), V::FieldTable(y)) => same_table(x, y),
        (V::Void, V::Void) => true,
        _ => false,
    }
}

fn string_bytes(v: &AMQPValue) -> &[u8] {
    match v {
        AMQPValue::ShortString(s) => s.as_str().as_bytes(),
        AMQPValue::LongString(s) => s.as_bytes(),
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_codec::LongString;
    use amqp_codec::types::{ByteArray, DecimalValue, FieldArray};

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(text: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(text))
    }

    /// Whether a binding with `binding` arguments routes a message with `message` headers.
    fn routes(binding: &[(&str, AMQPValue)], message: Option<&[(&str, AMQPValue)]>) -> bool {
        let args = table(binding);
        let headers = message.map(table);
        matches(&args, MatchMode::of(&args), headers.as_ref())
    }

    #[test]
    fn all_is_the_default_and_needs_every_argument() {
        let binding = [("a", s("1")), ("b", s("2"))];
        assert!(routes(&binding, Some(&[("a", s("1")), ("b", s("2"))])));
        assert!(routes(
            &binding,
            Some(&[("a", s("1")), ("b", s("2")), ("c", s("3"))])
        ));
        assert!(!routes(&binding, Some(&[("a", s("1"))])));
        assert!(!routes(&binding, Some(&[("a", s("1")), ("b", s("3"))])));
        assert!(!routes(&binding, None));
    }

    #[test]
    fn explicit_all_behaves_like_the_default() {
        let binding = [("x-match", s("all")), ("a", s("1")), ("b", s("2"))];
        assert!(routes(&binding, Some(&[("a", s("1")), ("b", s("2"))])));
        assert!(!routes(&binding, Some(&[("b", s("2"))])));
    }

    #[test]
    fn any_needs_one_matching_argument() {
        let binding = [("x-match", s("any")), ("a", s("1")), ("b", s("2"))];
        assert!(routes(&binding, Some(&[("a", s("1"))])));
        assert!(routes(&binding, Some(&[("a", s("0")), ("b", s("2"))])));
        assert!(!routes(&binding, Some(&[("a", s("0")), ("b", s("0"))])));
        assert!(!routes(&binding, Some(&[("c", s("1"))])));
        assert!(!routes(&binding, None));
    }

    #[test]
    fn all_with_no_arguments_to_match_routes_every_message() {
        assert!(routes(&[], None));
        assert!(routes(&[], Some(&[("a", s("1"))])));
        assert!(routes(&[("x-match", s("all"))], None));
        assert!(routes(&[("x-match", s("all")), ("x-other", s("v"))], None));
    }

    #[test]
    fn any_with_no_arguments_to_match_routes_nothing() {
        assert!(!routes(&[("x-match", s("any"))], None));
        assert!(!routes(&[("x-match", s("any"))], Some(&[("a", s("1"))])));
        assert!(!routes(
            &[("x-match", s("any")), ("x-a", s("1"))],
            Some(&[("x-a", s("1"))])
        ));
    }

    #[test]
    fn x_arguments_are_not_matched_in_all_and_any() {
        let binding = [("x-match", s("all")), ("x-tenant", s("t1")), ("a", s("1"))];
        assert!(routes(&binding, Some(&[("a", s("1"))])));
        assert!(routes(
            &binding,
            Some(&[("a", s("1")), ("x-tenant", s("t2"))])
        ));
        let binding = [("x-match", s("any")), ("x-tenant", s("t1")), ("a", s("1"))];
        assert!(!routes(&binding, Some(&[("x-tenant", s("t1"))])));
    }

    #[test]
    fn all_with_x_matches_x_arguments_against_x_headers() {
        let binding = [
            ("x-match", s("all-with-x")),
            ("x-tenant", s("t1")),
            ("a", s("1")),
        ];
        assert!(routes(
            &binding,
            Some(&[("a", s("1")), ("x-tenant", s("t1"))])
        ));
        assert!(!routes(&binding, Some(&[("a", s("1"))])));
        assert!(!routes(
            &binding,
            Some(&[("a", s("1")), ("x-tenant", s("t2"))])
        ));
    }

    #[test]
    fn any_with_x_is_satisfied_by_an_x_header_alone() {
        let binding = [
            ("x-match", s("any-with-x")),
            ("x-tenant", s("t1")),
            ("a", s("1")),
        ];
        assert!(routes(&binding, Some(&[("x-tenant", s("t1"))])));
        assert!(routes(&binding, Some(&[("a", s("1"))])));
        assert!(!routes(&binding, Some(&[("x-tenant", s("t2"))])));
    }

    #[test]
    fn x_match_itself_is_never_matched_against_headers() {
        // The message has no x-match header, yet all-with-x routes it.
        assert!(routes(
            &[("x-match", s("all-with-x")), ("a", s("1"))],
            Some(&[("a", s("1"))])
        ));
        // A message x-match header does not satisfy any-with-x on its own.
        assert!(!routes(
            &[("x-match", s("any-with-x"))],
            Some(&[("x-match", s("any-with-x"))])
        ));
    }

    #[test]
    fn unknown_x_match_values_and_types_route_as_all() {
        for x_match in [
            s("ANY"),
            s("some"),
            AMQPValue::Boolean(true),
            AMQPValue::LongInt(1),
        ] {
            let binding = [("x-match", x_match.clone()), ("a", s("1")), ("b", s("2"))];
            assert!(!routes(&binding, Some(&[("a", s("1"))])), "{x_match:?}");
            assert!(
                routes(&binding, Some(&[("a", s("1")), ("b", s("2"))])),
                "{x_match:?}"
            );
        }
    }

    #[test]
    fn void_argument_matches_presence_of_any_value() {
        let binding = [("a", AMQPValue::Void)];
        assert!(routes(&binding, Some(&[("a", s("anything"))])));
        assert!(routes(&binding, Some(&[("a", AMQPValue::LongInt(7))])));
        assert!(routes(&binding, Some(&[("a", AMQPValue::Void)])));
        assert!(!routes(&binding, Some(&[("b", s("1"))])));
        assert!(!routes(&binding, None));
    }

    #[test]
    fn void_header_equals_no_non_void_argument() {
        assert!(!routes(&[("a", s(""))], Some(&[("a", AMQPValue::Void)])));
        assert!(!routes(
            &[("a", AMQPValue::Boolean(false))],
            Some(&[("a", AMQPValue::Void)])
        ));
    }

    #[test]
    fn integers_of_different_widths_match_by_value() {
        let ints = [
            AMQPValue::ShortShortInt(7),
            AMQPValue::ShortShortUInt(7),
            AMQPValue::ShortInt(7),
            AMQPValue::ShortUInt(7),
            AMQPValue::LongInt(7),
            AMQPValue::LongUInt(7),
            AMQPValue::LongLongInt(7),
        ];
        for a in &ints {
            for b in &ints {
                assert!(
                    routes(&[("n", a.clone())], Some(&[("n", b.clone())])),
                    "{a:?} {b:?}"
                );
            }
        }
        assert!(!routes(
            &[("n", AMQPValue::LongInt(-1))],
            Some(&[("n", AMQPValue::LongUInt(u32::MAX))])
        ));
        assert!(!routes(
            &[("n", AMQPValue::LongInt(7))],
            Some(&[("n", AMQPValue::LongInt(8))])
        ));
    }

    #[test]
    fn an_integer_never_matches_a_float() {
        assert!(!routes(
            &[("n", AMQPValue::LongInt(1))],
            Some(&[("n", AMQPValue::Double(1.0))])
        ));
        assert!(!routes(
            &[("n", AMQPValue::Float(1.0))],
            Some(&[("n", AMQPValue::LongLongInt(1))])
        ));
    }

    #[test]
    fn float_and_double_match_by_exact_value() {
        assert!(routes(
            &[("f", AMQPValue::Float(0.5))],
            Some(&[("f", AMQPValue::Double(0.5))])
        ));
        assert!(routes(
            &[("f", AMQPValue::Double(2.25))],
            Some(&[("f", AMQPValue::Double(2.25))])
        ));
        // 0.1f32 widened is not 0.1f64.
        assert!(!routes(
            &[("f", AMQPValue::Float(0.1))],
            Some(&[("f", AMQPValue::Double(0.1))])
        ));
        assert!(!routes(
            &[("f", AMQPValue::Double(0.0))],
            Some(&[("f", AMQPValue::Double(-0.0))])
        ));
    }

    #[test]
    fn strings_and_byte_arrays_match_by_bytes() {
        let bytes = AMQPValue::ByteArray(ByteArray::from(b"pdf".to_vec()));
        assert!(routes(&[("f", s("pdf"))], Some(&[("f", bytes.clone())])));
        assert!(routes(&[("f", bytes)], Some(&[("f", s("pdf"))])));
        assert!(routes(
            &[("f", AMQPValue::ShortString("pdf".into()))],
            Some(&[("f", s("pdf"))])
        ));
        assert!(!routes(&[("f", s("pdf"))], Some(&[("f", s("PDF"))])));
    }

    #[test]
    fn booleans_only_match_booleans() {
        let t = AMQPValue::Boolean(true);
        assert!(routes(&[("b", t.clone())], Some(&[("b", t.clone())])));
        assert!(!routes(
            &[("b", t.clone())],
            Some(&[("b", AMQPValue::Boolean(false))])
        ));
        assert!(!routes(
            &[("b", t.clone())],
            Some(&[("b", AMQPValue::ShortShortUInt(1))])
        ));
        assert!(!routes(&[("b", t)], Some(&[("b", s("true"))])));
    }

    #[test]
    fn decimals_match_only_with_the_same_scale_and_digits() {
        let d = |scale, value| AMQPValue::DecimalValue(DecimalValue { scale, value });
        assert!(routes(&[("d", d(2, 150))], Some(&[("d", d(2, 150))])));
        assert!(!routes(&[("d", d(2, 150))], Some(&[("d", d(1, 15))])));
        assert!(!routes(
            &[("d", d(0, 1))],
            Some(&[("d", AMQPValue::LongInt(1))])
        ));
    }

    #[test]
    fn timestamp_headers_are_compared_in_milliseconds() {
        let ts = AMQPValue::Timestamp(5);
        assert!(routes(
            &[("t", AMQPValue::LongLongInt(5000))],
            Some(&[("t", ts.clone())])
        ));
        assert!(!routes(&[("t", ts.clone())], Some(&[("t", ts.clone())])));
        assert!(!routes(&[("t", AMQPValue::LongInt(5))], Some(&[("t", ts)])));
        // A timestamp binding value is not scaled: it matches plain integer headers.
        assert!(routes(
            &[("t", AMQPValue::Timestamp(5))],
            Some(&[("t", AMQPValue::LongInt(5))])
        ));
        assert!(routes(
            &[("t", AMQPValue::Timestamp(0))],
            Some(&[("t", AMQPValue::Timestamp(0))])
        ));
    }

    #[test]
    fn arrays_match_element_by_element_with_types() {
        let arr = |v: Vec<AMQPValue>| AMQPValue::FieldArray(FieldArray::from(v));
        let a = arr(vec![AMQPValue::LongInt(1), s("x")]);
        assert!(routes(&[("a", a.clone())], Some(&[("a", a.clone())])));
        let other_type = arr(vec![AMQPValue::LongLongInt(1), s("x")]);
        assert!(!routes(&[("a", a.clone())], Some(&[("a", other_type)])));
        let shorter = arr(vec![AMQPValue::LongInt(1)]);
        assert!(!routes(&[("a", a)], Some(&[("a", shorter)])));
    }

    #[test]
    fn nested_tables_match_key_by_key_with_types() {
        let inner = table(&[("k", AMQPValue::LongInt(1))]);
        let same = AMQPValue::FieldTable(inner.clone());
        assert!(routes(&[("t", same.clone())], Some(&[("t", same)])));
        let retyped = AMQPValue::FieldTable(table(&[("k", AMQPValue::ShortInt(1))]));
        assert!(!routes(
            &[("t", AMQPValue::FieldTable(inner))],
            Some(&[("t", retyped)])
        ));
    }

    #[test]
    fn empty_array_and_empty_table_are_equal_as_in_erlang() {
        let empty_array = AMQPValue::FieldArray(FieldArray::default());
        let empty_table = AMQPValue::FieldTable(FieldTable::default());
        assert!(routes(
            &[("e", empty_array.clone())],
            Some(&[("e", empty_table.clone())])
        ));
        assert!(routes(&[("e", empty_table)], Some(&[("e", empty_array)])));
    }

    #[test]
    fn validate_accepts_the_four_modes_and_absence() {
        for mode in ["all", "any", "all-with-x", "any-with-x"] {
            assert_eq!(validate(&table(&[("x-match", s(mode))])), Ok(()));
        }
        assert_eq!(validate(&table(&[("a", s("1"))])), Ok(()));
    }

    #[test]
    fn validate_refuses_unknown_values_and_non_string_types() {
        let err = validate(&table(&[("x-match", s("some"))])).unwrap_err();
        assert!(err.0.contains("Invalid x-match field value"), "{err}");
        let err = validate(&table(&[("x-match", AMQPValue::Boolean(true))])).unwrap_err();
        assert!(err.0.contains("expected longstr"), "{err}");
    }

    #[test]
    fn same_table_compares_keys_values_and_types() {
        let a = table(&[("n", AMQPValue::LongInt(1)), ("s", s("x"))]);
        assert!(same_table(&a, &a.clone()));
        assert!(!same_table(&a, &table(&[("n", AMQPValue::LongInt(1))])));
        assert!(!same_table(
            &a,
            &table(&[("n", AMQPValue::LongLongInt(1)), ("s", s("x"))])
        ));
        let nan = table(&[("f", AMQPValue::Double(f64::NAN))]);
        assert!(
            same_table(&nan, &nan.clone()),
            "a NaN argument can still be unbound"
        );
    }
}
