//! Client-neutral checks of what a client received. Each driver turns its library's decoded
//! properties and header table into JSON (see its `values.rs`); these functions compare that
//! JSON with scenarios.json. JSON equality is strict here: `true` is not `1`, and `1` is not
//! `1.0`.

use serde_json::{Map, Value};

use crate::fail;
use crate::outcome::Step;
use crate::spec::{Canonical, Params};

/// Differences between a received message and the canonical one, one string each (empty:
/// unchanged). `properties` is keyed as in scenarios.json; an absent property is missing or
/// `null`.
pub fn compare_canonical(
    canon: &Canonical,
    body: &[u8],
    properties: &Map<String, Value>,
    headers: &Value,
) -> Vec<String> {
    let mut diffs = Vec::new();
    if body != canon.body.as_bytes() {
        diffs.push(format!(
            "body {:?} != {:?}",
            String::from_utf8_lossy(body),
            canon.body
        ));
    }
    for (key, want) in &canon.properties {
        let got = properties.get(key).unwrap_or(&Value::Null);
        if got != want {
            diffs.push(format!("{key}: got {got}, want {want}"));
        }
    }
    let empty = Map::new();
    let got_headers = headers.as_object().unwrap_or(&empty);
    if *got_headers != canon.headers {
        let mut keys: Vec<&String> = canon.headers.keys().chain(got_headers.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let (want, got) = (canon.headers.get(key), got_headers.get(key));
            if want != got {
                diffs.push(format!(
                    "header {key}: got {}, want {}",
                    shown(got),
                    shown(want)
                ));
            }
        }
    }
    diffs
}

fn shown(v: Option<&Value>) -> String {
    v.map_or_else(|| "<missing>".to_owned(), Value::to_string)
}

/// Checks the first `x-death` entry of `headers`: its reason, queue and any `more` (keys as
/// RabbitMQ writes them, e.g. `routing-keys`). Returns that entry.
pub fn x_death(
    headers: &Value,
    reason: &str,
    queue: &str,
    more: &[(&str, Value)],
) -> Step<Map<String, Value>> {
    let Some(first) = headers
        .get("x-death")
        .and_then(Value::as_array)
        .and_then(|d| d.first())
    else {
        fail!("no x-death header; headers: {headers}");
    };
    let Some(first) = first.as_object() else {
        fail!("x-death[0] is no table: {first}");
    };
    let mut problems = Vec::new();
    let want = [
        ("reason", Value::from(reason)),
        ("queue", Value::from(queue)),
    ];
    for (key, want) in want.iter().chain(more) {
        let got = first.get(*key).unwrap_or(&Value::Null);
        if got != want {
            problems.push(format!("{key} {got}, want {want}"));
        }
    }
    if !problems.is_empty() {
        fail!(
            "x-death[0]: {} (x-death: {})",
            problems.join("; "),
            headers["x-death"]
        );
    }
    Ok(first.clone())
}

/// Checks that deliveries `(body, redelivered)` are `0`, `1`, ... in that order (the bodies
/// `publish_numbered` sends) and none is a redelivery.
pub fn numbered_in_order<'a>(deliveries: impl IntoIterator<Item = (&'a [u8], bool)>) -> Step<()> {
    for (i, (body, redelivered)) in deliveries.into_iter().enumerate() {
        if body != i.to_string().as_bytes() || redelivered {
            fail!(
                "delivery {i}: body {:?}, redelivered {redelivered}",
                String::from_utf8_lossy(body)
            );
        }
    }
    Ok(())
}

/// What `mandatory_return` publishes, mandatory, to a routing key no queue has.
pub const RETURN_BODY: &[u8] = b"bounce";

/// Checks the `basic.return` of `mandatory_return` (`p` holds the reply code and text it
/// expects); the detail of a pass.
pub fn basic_return(
    p: &Params,
    key: &str,
    reply_code: u16,
    reply_text: &str,
    routing_key: &str,
    body: &[u8],
) -> Step<String> {
    let got = (u64::from(reply_code), reply_text, routing_key, body);
    let want = (p.u64("reply_code")?, p.str("reply_text")?, key, RETURN_BODY);
    if got != want {
        fail!(
            "return {reply_code} {reply_text} {routing_key} {:?}",
            String::from_utf8_lossy(body)
        );
    }
    Ok(format!("basic.return {reply_code} {reply_text}"))
}

/// A value for a detail text: strings without their quotes.
pub fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `large_body` scenario's body: byte `i` is `i mod modulus`.
pub fn large_body(size: usize, modulus: usize) -> Vec<u8> {
    (0..size).map(|i| (i % modulus.max(1)) as u8).collect()
}

/// Where two bodies first differ, for a failure's text (`None`: they are equal).
pub fn body_difference(got: &[u8], want: &[u8]) -> Option<String> {
    if got == want {
        return None;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    Some(format!(
        "length {} (want {}), first difference at byte {at}",
        got.len(),
        want.len()
    ))
}

/// Raw bytes in a header, which no canonical value is: shown as `{"$bytes": hex}`.
pub fn bytes_value(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::from(s),
        Err(_) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            serde_json::json!({ "$bytes": hex })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon() -> Canonical {
        Canonical {
            body: "hé".into(),
            properties: json!({"priority": 5, "type": "t"})
                .as_object()
                .unwrap()
                .clone(),
            headers: json!({"n": 1, "yes": true, "nested": {"list": [1, 2]}})
                .as_object()
                .unwrap()
                .clone(),
        }
    }

    #[test]
    fn an_unchanged_message_has_no_differences() {
        let props = json!({"priority": 5, "type": "t", "app_id": null});
        let headers = json!({"n": 1, "yes": true, "nested": {"list": [1, 2]}});
        let diffs = compare_canonical(
            &canon(),
            "hé".as_bytes(),
            props.as_object().unwrap(),
            &headers,
        );
        assert!(diffs.is_empty(), "{diffs:?}");
    }

    #[test]
    fn a_boolean_is_not_an_integer_and_a_missing_header_is_named() {
        let props = json!({"priority": 5});
        let headers = json!({"n": true, "nested": {"list": [1, 2]}});
        let diffs = compare_canonical(&canon(), b"x", props.as_object().unwrap(), &headers);
        assert_eq!(diffs.len(), 4, "{diffs:?}");
        assert!(diffs[1].starts_with("type: got null"), "{diffs:?}");
        assert!(diffs.contains(&"header n: got true, want 1".to_owned()));
        assert!(diffs.contains(&"header yes: got <missing>, want true".to_owned()));
    }

    #[test]
    fn x_death_reports_each_wrong_field() {
        let h = json!({"x-death": [{"reason": "rejected", "queue": "q", "count": 1}]});
        assert!(x_death(&h, "rejected", "q", &[("count", json!(1))]).is_ok());
        let err = x_death(&h, "expired", "q", &[("count", json!(2))]).unwrap_err();
        let crate::Outcome::Fail(m) = err else {
            panic!()
        };
        assert!(m.contains("reason \"rejected\", want \"expired\""), "{m}");
        assert!(m.contains("count 1, want 2"), "{m}");
        assert!(x_death(&json!({}), "rejected", "q", &[]).is_err());
    }

    #[test]
    fn large_body_follows_the_pattern() {
        let b = large_body(600, 251);
        assert_eq!((b[0], b[250], b[251], b[599]), (0, 250, 0, 97));
        assert_eq!(body_difference(&b, &b), None);
        assert!(body_difference(&b[..10], &b).is_some());
    }
}
