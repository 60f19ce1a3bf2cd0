//! The bindings of one exchange and the routing decision they make: (routing key, headers) ->
//! destinations.
//!
//! Pure data, generic over the destination type `D` (a queue name, an exchange name, an index),
//! so this module knows nothing about queues, channels or storage. Every binding is kept once, by
//! destination, for listing and unbinding; each exchange kind adds the index it routes with:
//! - direct: a hash map from routing key to destinations, one lookup per message;
//! - fanout: the destinations themselves;
//! - topic: a trie of words built at bind time ([`super::topic`]), walked per message;
//! - headers: the bindings, each matched against the message headers ([`super::headers`]).
//!
//! A destination bound several times (same key with different arguments, or patterns that
//! overlap) is routed to once per [`RoutingTable::route`] call, as RabbitMQ does.

use crate::hash::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;

use amqp_codec::FieldTable;

use super::headers::{self, MatchMode};
use super::topic::TopicTrie;

/// The four exchange types of AMQP 0-9-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    /// The name clients use in `exchange.declare`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }

    /// Checks binding arguments the way RabbitMQ's `validate_binding` does: only a headers
    /// exchange looks at them, and its `x-match` must be a long string naming one of the four
    /// match modes (or be absent). A failure is a 406 PRECONDITION_FAILED on `queue.bind` /
    /// `exchange.bind`.
    pub fn validate_binding(self, arguments: &FieldTable) -> Result<(), InvalidBinding> {
        match self {
            ExchangeKind::Headers => headers::validate(arguments),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An exchange type this broker does not implement (e.g. a plugin's `x-consistent-hash`).
/// RabbitMQ answers `exchange.declare` with 503 COMMAND_INVALID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown exchange type '{0}'")]
pub struct UnknownExchangeKind(pub String);

impl FromStr for ExchangeKind {
    type Err = UnknownExchangeKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "topic" => Ok(ExchangeKind::Topic),
            "headers" => Ok(ExchangeKind::Headers),
            other => Err(UnknownExchangeKind(other.to_owned())),
        }
    }
}

/// Binding arguments a headers exchange refuses (a bad `x-match`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidBinding(pub String);

/// One binding as declared, kept for listing, unbinding and persistence.
struct Binding {
    routing_key: Box<str>,
    arguments: FieldTable,
    /// How a headers exchange reads `arguments`; parsed once at bind time.
    match_mode: MatchMode,
}

/// The routing index of each exchange kind.
enum Index<D> {
    /// Routing key -> (destination, number of its bindings with this key).
    Direct(HashMap<Box<[u8]>, Vec<(D, u32)>>),
    /// Fanout and headers route from `RoutingTable::by_destination` itself.
    ByDestination,
    Topic(TopicTrie<D>),
}

/// The bindings of one exchange, indexed for routing.
pub struct RoutingTable<D> {
    kind: ExchangeKind,
    /// Every binding, grouped by destination: answers `has_destination`, `remove_destination`
    /// and duplicate checks without scanning other destinations, and is the fanout/headers
    /// routing set (each destination appears once, so no de-duplication is needed there).
    by_destination: HashMap<D, Vec<Binding>>,
    index: Index<D>,
    /// Total number of bindings.
    len: usize,
}

impl<D: Clone + Eq + Hash> RoutingTable<D> {
    pub fn new(kind: ExchangeKind) -> Self {
        let index = match kind {
            ExchangeKind::Direct => Index::Direct(HashMap::default()),
            ExchangeKind::Fanout | ExchangeKind::Headers => Index::ByDestination,
            ExchangeKind::Topic => Index::Topic(TopicTrie::new()),
        };
        Self {
            kind,
            by_destination: HashMap::default(),
            index,
            len: 0,
        }
    }

    pub fn kind(&self) -> ExchangeKind {
        self.kind
    }

    /// Adds a binding; returns false if the identical (destination, routing key, arguments)
    /// binding already existed.
    ///
    /// Arguments are compared as RabbitMQ compares them: key by key, with their types (a
    /// `long 1` and a `signedint 1` make two different bindings).
    pub fn bind(&mut self, destination: D, routing_key: &str, arguments: &FieldTable) -> bool {
        let bindings = self.by_destination.entry(destination.clone()).or_default();
        if bindings
            .iter()
            .any(|b| &*b.routing_key == routing_key && headers::same_table(&b.arguments, arguments))
        {
            return false;
        }
        bindings.push(Binding {
            routing_key: routing_key.into(),
            arguments: arguments.clone(),
            match_mode: MatchMode::of(arguments),
        });
        self.len += 1;
        match &mut self.index {
            Index::Direct(keys) => {
                let dests = keys.entry(routing_key.as_bytes().into()).or_default();
                add_ref(dests, destination);
            }
            Index::ByDestination => {}
            Index::Topic(trie) => trie.insert(routing_key.as_bytes(), destination),
        }
        true
    }

    /// Removes the identical binding; returns whether it existed.
    pub fn unbind(&mut self, destination: &D, routing_key: &str, arguments: &FieldTable) -> bool {
        let Some(bindings) = self.by_destination.get_mut(destination) else {
            return false;
        };
        let Some(pos) = bindings.iter().position(|b| {
            &*b.routing_key == routing_key && headers::same_table(&b.arguments, arguments)
        }) else {
            return false;
        };
        let binding = bindings.remove(pos);
        if bindings.is_empty() {
            self.by_destination.remove(destination);
        }
        self.len -= 1;
        self.unindex(destination, &binding);
        true
    }

    /// Removes every binding to `destination` (queue or exchange deleted); returns how many.
    pub fn remove_destination(&mut self, destination: &D) -> usize {
        let Some(bindings) = self.by_destination.remove(destination) else {
            return 0;
        };
        self.len -= bindings.len();
        for binding in &bindings {
            self.unindex(destination, binding);
        }
        bindings.len()
    }

    /// Appends the destinations matching this message to `out` (each at most once per call).
    ///
    /// `headers` is the message's `headers` property; only a headers exchange reads it, and
    /// only a headers exchange ignores `routing_key`.
    pub fn route(&self, routing_key: &[u8], headers: Option<&FieldTable>, out: &mut Vec<D>) {
        match (&self.index, self.kind) {
            (Index::Direct(keys), _) => {
                if let Some(dests) = keys.get(routing_key) {
                    out.extend(dests.iter().map(|(d, _)| d.clone()));
                }
            }
            (Index::Topic(trie), _) => {
                let start = out.len();
                trie.route(routing_key, out);
                dedup_tail(out, start);
            }
            (Index::ByDestination, ExchangeKind::Headers) => {
                for (destination, bindings) in &self.by_destination {
                    if bindings
                        .iter()
                        .any(|b| headers::matches(&b.arguments, b.match_mode, headers))
                    {
                        out.push(destination.clone());
                    }
                }
            }
            (Index::ByDestination, _) => out.extend(self.by_destination.keys().cloned()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of bindings (not of destinations).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn has_destination(&self, destination: &D) -> bool {
        self.by_destination.contains_key(destination)
    }

    /// Every binding as (destination, routing key, arguments); bindings of one destination come
    /// in the order they were made, destinations in no particular order.
    pub fn bindings(&self) -> impl Iterator<Item = (&D, &str, &FieldTable)> {
        self.by_destination.iter().flat_map(|(d, bindings)| {
            bindings
                .iter()
                .map(move |b| (d, &*b.routing_key, &b.arguments))
        })
    }

    /// Drops one binding's entry from the routing index. The index counts bindings per
    /// (key, destination), so a destination still bound by the same key with other arguments
    /// stays routable.
    fn unindex(&mut self, destination: &D, binding: &Binding) {
        match &mut self.index {
            Index::Direct(keys) => {
                let key = binding.routing_key.as_bytes();
                if let Some(dests) = keys.get_mut(key) {
                    remove_ref(dests, destination);
                    if dests.is_empty() {
                        keys.remove(key);
                    }
                }
            }
            Index::ByDestination => {}
            Index::Topic(trie) => {
                trie.remove(binding.routing_key.as_bytes(), destination);
            }
        }
    }
}

impl<D> fmt::Debug for RoutingTable<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutingTable")
            .field("kind", &self.kind)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Counts one more binding of `destination` in a reference-counted destination list.
pub(super) fn add_ref<D: Eq>(dests: &mut Vec<(D, u32)>, destination: D) {
    match dests.iter_mut().find(|(d, _)| *d == destination) {
        Some((_, count)) => *count += 1,
        None => dests.push((destination, 1)),
    }
}

/// Counts one binding fewer; drops the destination at zero. Returns whether it was there.
pub(super) fn remove_ref<D: Eq>(dests: &mut Vec<(D, u32)>, destination: &D) -> bool {
    let Some(pos) = dests.iter().position(|(d, _)| d == destination) else {
        return false;
    };
    dests[pos].1 -= 1;
    if dests[pos].1 == 0 {
        dests.swap_remove(pos);
    }
    true
}

/// Removes repeats from `out[start..]`, keeping first occurrences in order. Quadratic for the
/// handful of matches a message usually has, hashed beyond that.
fn dedup_tail<D: Clone + Eq + Hash>(out: &mut Vec<D>, start: usize) {
    const LINEAR_LIMIT: usize = 16;
    let n = out.len() - start;
    if n < 2 {
        return;
    }
    if n <= LINEAR_LIMIT {
        let mut kept = start;
        for i in start..out.len() {
            if !out[start..kept].contains(&out[i]) {
                out.swap(kept, i);
                kept += 1;
            }
        }
        out.truncate(kept);
        return;
    }
    let tail = out.split_off(start);
    let mut seen = HashSet::with_capacity_and_hasher(tail.len(), Default::default());
    for d in tail {
        if !seen.contains(&d) {
            seen.insert(d.clone());
            out.push(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_codec::{AMQPValue, LongString};

    fn no_args() -> FieldTable {
        FieldTable::default()
    }

    fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn routed(table: &RoutingTable<&'static str>, key: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        table.route(key.as_bytes(), None, &mut out);
        out.sort_unstable();
        out
    }

    #[test]
    fn exchange_kind_parses_and_prints_the_four_amqp_types() {
        for (name, kind) in [
            ("direct", ExchangeKind::Direct),
            ("fanout", ExchangeKind::Fanout),
            ("topic", ExchangeKind::Topic),
            ("headers", ExchangeKind::Headers),
        ] {
            assert_eq!(name.parse::<ExchangeKind>(), Ok(kind));
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
        }
    }

    #[test]
    fn exchange_kind_rejects_unknown_and_differently_cased_names() {
        assert_eq!(
            "x-consistent-hash".parse::<ExchangeKind>(),
            Err(UnknownExchangeKind("x-consistent-hash".into()))
        );
        assert!("Direct".parse::<ExchangeKind>().is_err());
        assert!("".parse::<ExchangeKind>().is_err());
    }

    #[test]
    fn direct_routes_on_exact_key_equality_only() {
        let mut t = RoutingTable::new(ExchangeKind::Direct);
        assert!(t.bind("q1", "orders", &no_args()));
        assert!(t.bind("q2", "orders.eu", &no_args()));
        assert!(t.bind("q3", "", &no_args()));
        assert_eq!(routed(&t, "orders"), ["q1"]);
        assert_eq!(routed(&t, "orders.eu"), ["q2"]);
        assert_eq!(routed(&t, ""), ["q3"]);
        assert!(routed(&t, "Orders").is_empty());
        assert!(routed(&t, "orders.").is_empty());
        assert!(routed(&t, "#").is_empty());
    }

    #[test]
    fn direct_routes_to_each_destination_bound_with_the_key() {
        let mut t = RoutingTable::new(ExchangeKind::Direct);
        t.bind("q1", "k", &no_args());
        t.bind("q2", "k", &no_args());
        t.bind("q2", "other", &no_args());
        assert_eq!(routed(&t, "k"), ["q1", "q2"]);
    }

    #[test]
    fn direct_does_not_treat_wildcards_specially() {
        let mut t = RoutingTable::new(ExchangeKind::Direct);
        t.bind("q1", "*", &no_args());
        t.bind("q2", "#", &no_args());
        assert!(routed(&t, "a").is_empty());
        assert_eq!(routed(&t, "*"), ["q1"]);
        assert_eq!(routed(&t, "#"), ["q2"]);
    }

    #[test]
    fn binding_twice_identically_is_reported_and_stored_once() {
        let mut t = RoutingTable::new(ExchangeKind::Direct);
        assert!(t.bind("q1", "k", &no_args()));
        assert!(!t.bind("q1", "k", &no_args()));
        assert_eq!(t.len(), 1);
        assert_eq!(routed(&t, "k"), ["q1"]);
    }

    #[test]
    fn same_key_with_different_arguments_is_a_second_binding_routed_once() {
        let mut t = RoutingTable::new(ExchangeKind::Direct);
        let a = args(&[("tag", AMQPValue::LongString(LongString::from("a")))]);
        assert!(t.bind("q1", "k", &no_args()));
        assert!(t.bind("q1", "k", &a));
        assert_eq!(t.len(), 2);
        assert_eq!(routed(&t, "k"), ["q1"]);
        // Removing one of the two keeps the destination routable through the other.
        assert!(t.unbind(&"q1", "k", &no_args()));
        assert_eq!(routed(&t, "k"), ["q1"]);
        assert!(t.unbind(&"q1", "k", &a));
        assert!(routed(&t, "k").is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn argument_types_distinguish_bindings() {
        let mut t = RoutingTable::new(ExchangeKind::Direct);
        let long = args(&[("n", AMQPValue::LongLongInt(1))]);
        let int = args(&[("n", AMQPValue::LongInt(1))]);
        assert!(t.bind("q1", "k", &long));
        assert!(t.bind("q1", "k", &int));
        assert!(!t.unbind(&"q1", "k", &args(&[("n", AMQPValue::ShortInt(1))])));
        assert!(t.unbind(&"q1", "k", &int));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn unbinding_a_binding_that_does_not_exist_changes_nothing() {
        let mut t = RoutingTable::new(ExchangeKind::Direct);
        t.bind("q1", "k", &no_args());
        assert!(!t.unbind(&"q1", "other", &no_args()));
        assert!(!t.unbind(&"q2", "k", &no_args()));
        assert!(!t.unbind(&"q1", "k", &args(&[("a", AMQPValue::Boolean(true))])));
        assert_eq!(t.len(), 1);
        assert_eq!(routed(&t, "k"), ["q1"]);
    }

    #[test]
    fn remove_destination_drops_all_its_bindings_and_keeps_others() {
        for kind in [
            ExchangeKind::Direct,
            ExchangeKind::Fanout,
            ExchangeKind::Topic,
            ExchangeKind::Headers,
        ] {
            let mut t = RoutingTable::new(kind);
            t.bind("q1", "a", &no_args());
            t.bind("q1", "b", &no_args());
            t.bind("q1", "#", &no_args());
            t.bind("q2", "a", &no_args());
            assert_eq!(t.remove_destination(&"q1"), 3, "{kind}");
            assert_eq!(t.remove_destination(&"q1"), 0, "{kind}");
            assert!(!t.has_destination(&"q1"));
            assert!(t.has_destination(&"q2"));
            assert_eq!(t.len(), 1);
            assert_eq!(routed(&t, "a"), ["q2"], "{kind}");
            assert!(!routed(&t, "b").contains(&"q1"), "{kind}");
        }
    }

    #[test]
    fn fanout_routes_to_every_destination_once_whatever_the_key() {
        let mut t = RoutingTable::new(ExchangeKind::Fanout);
        t.bind("q1", "", &no_args());
        t.bind("q2", "ignored", &no_args());
        t.bind("q2", "also-ignored", &no_args());
        assert_eq!(routed(&t, "anything"), ["q1", "q2"]);
        assert_eq!(routed(&t, ""), ["q1", "q2"]);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn empty_table_routes_nowhere() {
        for kind in [
            ExchangeKind::Direct,
            ExchangeKind::Fanout,
            ExchangeKind::Topic,
            ExchangeKind::Headers,
        ] {
            let t: RoutingTable<&str> = RoutingTable::new(kind);
            assert!(t.is_empty());
            assert!(routed(&t, "k").is_empty());
        }
    }

    #[test]
    fn topic_routes_each_destination_once_though_several_patterns_match() {
        let mut t = RoutingTable::new(ExchangeKind::Topic);
        t.bind("q1", "a.*", &no_args());
        t.bind("q1", "#", &no_args());
        t.bind("q1", "a.b", &no_args());
        t.bind("q2", "*.b", &no_args());
        assert_eq!(routed(&t, "a.b"), ["q1", "q2"]);
    }

    #[test]
    fn topic_deduplication_handles_many_destinations() {
        let mut t = RoutingTable::new(ExchangeKind::Topic);
        for i in 0..40u32 {
            t.bind(i, "a.*", &no_args());
            t.bind(i, "#.b", &no_args());
            t.bind(i, "#", &no_args());
        }
        let mut out = vec![1000];
        t.route(b"a.b", None, &mut out);
        assert_eq!(out[0], 1000, "what was already in `out` is left alone");
        let mut got = out[1..].to_vec();
        got.sort_unstable();
        assert_eq!(got, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn route_appends_to_out_without_touching_its_contents() {
        let mut t = RoutingTable::new(ExchangeKind::Topic);
        t.bind("q1", "#", &no_args());
        let mut out = vec!["q1"];
        t.route(b"x", None, &mut out);
        assert_eq!(out, ["q1", "q1"]);
    }

    #[test]
    fn topic_unbind_keeps_other_bindings_sharing_the_path() {
        let mut t = RoutingTable::new(ExchangeKind::Topic);
        t.bind("q1", "a.b", &no_args());
        t.bind("q2", "a.b.c", &no_args());
        t.bind("q3", "a.#", &no_args());
        assert!(t.unbind(&"q1", "a.b", &no_args()));
        assert_eq!(routed(&t, "a.b"), ["q3"]);
        assert_eq!(routed(&t, "a.b.c"), ["q2", "q3"]);
        assert!(t.unbind(&"q3", "a.#", &no_args()));
        assert_eq!(routed(&t, "a.b.c"), ["q2"]);
        assert!(routed(&t, "a.b").is_empty());
    }

    #[test]
    fn topic_unbind_of_one_spelling_of_hash_run_keeps_the_other() {
        let mut t = RoutingTable::new(ExchangeKind::Topic);
        t.bind("q1", "#", &no_args());
        t.bind("q1", "#.#", &no_args());
        assert!(t.unbind(&"q1", "#.#", &no_args()));
        assert_eq!(routed(&t, "a.b"), ["q1"]);
        assert!(t.unbind(&"q1", "#", &no_args()));
        assert!(routed(&t, "a.b").is_empty());
    }

    #[test]
    fn headers_exchange_ignores_the_routing_key() {
        let mut t = RoutingTable::new(ExchangeKind::Headers);
        let a = args(&[
            ("x-match", AMQPValue::LongString("all".into())),
            ("format", AMQPValue::LongString("pdf".into())),
        ]);
        t.bind("q1", "some-key", &a);
        let msg = args(&[("format", AMQPValue::LongString("pdf".into()))]);
        let mut out = Vec::new();
        t.route(b"other-key", Some(&msg), &mut out);
        assert_eq!(out, ["q1"]);
        out.clear();
        t.route(b"some-key", None, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn headers_routes_a_destination_once_when_several_bindings_match() {
        let mut t = RoutingTable::new(ExchangeKind::Headers);
        t.bind("q1", "", &args(&[("a", AMQPValue::LongInt(1))]));
        t.bind("q1", "", &args(&[("b", AMQPValue::LongInt(2))]));
        t.bind("q2", "", &args(&[("b", AMQPValue::LongInt(3))]));
        let msg = args(&[("a", AMQPValue::LongInt(1)), ("b", AMQPValue::LongInt(2))]);
        let mut out = Vec::new();
        t.route(b"", Some(&msg), &mut out);
        assert_eq!(out, ["q1"]);
    }

    #[test]
    fn bindings_lists_every_binding_with_its_key_and_arguments() {
        let mut t = RoutingTable::new(ExchangeKind::Topic);
        let a = args(&[("x", AMQPValue::Boolean(true))]);
        t.bind("q1", "a.*", &no_args());
        t.bind("q1", "b.#", &a);
        t.bind("q2", "c", &no_args());
        let mut listed: Vec<_> = t
            .bindings()
            .map(|(d, k, args)| (*d, k.to_owned(), args.clone()))
            .collect();
        listed.sort_by(|x, y| (x.0, &x.1).cmp(&(y.0, &y.1)));
        assert_eq!(
            listed,
            vec![
                ("q1", "a.*".to_owned(), no_args()),
                ("q1", "b.#".to_owned(), a),
                ("q2", "c".to_owned(), no_args()),
            ]
        );
    }

    #[test]
    fn validate_binding_checks_x_match_only_on_headers_exchanges() {
        let bad = args(&[("x-match", AMQPValue::LongString("some".into()))]);
        assert!(ExchangeKind::Direct.validate_binding(&bad).is_ok());
        assert!(ExchangeKind::Topic.validate_binding(&bad).is_ok());
        assert!(ExchangeKind::Headers.validate_binding(&bad).is_err());
        assert!(ExchangeKind::Headers.validate_binding(&no_args()).is_ok());
    }

    #[test]
    fn dedup_tail_keeps_first_occurrences_in_order() {
        let mut v = vec![9, 1, 2, 1, 3, 2, 9];
        dedup_tail(&mut v, 1);
        assert_eq!(v, [9, 1, 2, 3, 9]);
        let mut long: Vec<u32> = (0..50).chain(0..50).collect();
        dedup_tail(&mut long, 0);
        assert_eq!(long, (0..50).collect::<Vec<_>>());
    }
}
