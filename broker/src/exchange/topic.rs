//! Topic routing: a trie of binding-key words, built at bind time and walked per message.
//!
//! Words are separated by `.`; in a binding key `*` matches exactly one word and `#` matches
//! zero or more. As in RabbitMQ (`rabbit_db_topic_exchange:split_topic_key`):
//! - the empty key has no words at all, so binding `""` matches only routing key `""`, `#`
//!   matches `""`, and `*` does not;
//! - otherwise every `.` separates two words, empty ones included: `"a..b"` is `a`, ``, `b`,
//!   and `"a."` is `a`, `` (so `a.*` and `a.#` match it);
//! - `*` and `#` are wildcards only as whole words (`a#` is a literal word), and a routing
//!   key's own `*` or `#` words are plain words (matched by a binding's `*` and `#`, and by
//!   nothing else).
//!
//! Consecutive `#` words match exactly what a single `#` does, so the trie stores `#.#` on the
//! same path as `#`: the walk never tries the same split of the key twice through a run of
//! `#`s. A routing key is walked in place (no split into a vector, no allocation); matching
//! several bindings of one destination yields it several times, and the caller de-duplicates.

use crate::hash::HashMap;

use super::routing::{add_ref, remove_ref};

/// The bindings of one topic exchange.
pub(crate) struct TopicTrie<D> {
    root: Node<D>,
}

struct Node<D> {
    /// Children reached by a literal word.
    words: HashMap<Box<[u8]>, Node<D>>,
    /// Child reached by `*`.
    star: Option<Box<Node<D>>>,
    /// Child reached by `#` (never itself has a `#` child: runs of `#` are collapsed).
    hash: Option<Box<Node<D>>>,
    /// Destinations of the bindings whose key ends here, each with its number of bindings
    /// (one destination can be bound by `a.#` and `a.#.#`, or with different arguments).
    destinations: Vec<(D, u32)>,
}

impl<D> Default for Node<D> {
    fn default() -> Self {
        Self {
            words: HashMap::default(),
            star: None,
            hash: None,
            destinations: Vec::new(),
        }
    }
}

impl<D> Node<D> {
    fn is_empty(&self) -> bool {
        self.destinations.is_empty() && self.is_leaf()
    }

    fn is_leaf(&self) -> bool {
        self.words.is_empty() && self.star.is_none() && self.hash.is_none()
    }
}

impl<D: Clone + Eq> TopicTrie<D> {
    pub(crate) fn new() -> Self {
        Self {
            root: Node::default(),
        }
    }

    /// Counts one binding of `destination` with `binding_key`.
    pub(crate) fn insert(&mut self, binding_key: &[u8], destination: D) {
        let mut node = &mut self.root;
        for word in binding_words(binding_key) {
            node = match word {
                b"*" => &mut **node.star.get_or_insert_with(Box::default),
                b"#" => &mut **node.hash.get_or_insert_with(Box::default),
                _ => node.words.entry(word.into()).or_default(),
            };
        }
        add_ref(&mut node.destinations, destination);
    }

    /// Removes one binding of `destination` with `binding_key`, and the nodes left empty.
    /// Returns whether it was there.
    pub(crate) fn remove(&mut self, binding_key: &[u8], destination: &D) -> bool {
        let words: Vec<&[u8]> = binding_words(binding_key).collect();
        remove_at(&mut self.root, &words, destination)
    }

    /// Appends the destination of every binding matching `routing_key`, repeats included.
    pub(crate) fn route(&self, routing_key: &[u8], out: &mut Vec<D>) {
        let rest = (!routing_key.is_empty()).then_some(routing_key);
        walk(&self.root, rest, out);
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

/// The words of a binding key, with runs of `#` collapsed to one.
fn binding_words(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut after_hash = false;
    let words = (!key.is_empty()).then(|| key.split(|&b| b == b'.'));
    words.into_iter().flatten().filter(move |word| {
        let hash = *word == b"#";
        let repeat = hash && after_hash;
        after_hash = hash;
        !repeat
    })
}

/// Splits off the first word of a non-empty remainder: `None` after it means no words remain.
fn first_word(rest: &[u8]) -> (&[u8], Option<&[u8]>) {
    match rest.iter().position(|&b| b == b'.') {
        Some(dot) => (&rest[..dot], Some(&rest[dot + 1..])),
        None => (rest, None),
    }
}

/// Matches the words in `rest` (`None`: no words left) from `node`.
fn walk<D: Clone>(node: &Node<D>, rest: Option<&[u8]>, out: &mut Vec<D>) {
    let Some(remaining) = rest else {
        out.extend(node.destinations.iter().map(|(d, _)| d.clone()));
        if let Some(hash) = &node.hash {
            // `#` matching zero words.
            walk(hash, None, out);
        }
        return;
    };
    let (word, after) = first_word(remaining);
    if !node.words.is_empty()
        && let Some(child) = node.words.get(word)
    {
        walk(child, after, out);
    }
    if let Some(star) = &node.star {
        walk(star, after, out);
    }
    if let Some(hash) = &node.hash {
        walk_hash(hash, rest, out);
    }
}

/// From the node just past a `#`: the `#` swallows zero or more of the words in `rest`.
fn walk_hash<D: Clone>(hash: &Node<D>, mut rest: Option<&[u8]>, out: &mut Vec<D>) {
    if hash.is_leaf() {
        // A trailing `#` matches whatever is left, once.
        out.extend(hash.destinations.iter().map(|(d, _)| d.clone()));
        return;
    }
    loop {
        walk(hash, rest, out);
        match rest {
            None => return,
            Some(remaining) => rest = first_word(remaining).1,
        }
    }
}

fn remove_at<D: Eq>(node: &mut Node<D>, words: &[&[u8]], destination: &D) -> bool {
    let Some((&word, rest)) = words.split_first() else {
        return remove_ref(&mut node.destinations, destination);
    };
    match word {
        b"*" | b"#" => {
            let slot = if word == b"*" {
                &mut node.star
            } else {
                &mut node.hash
            };
            let Some(child) = slot.as_mut() else {
                return false;
            };
            let found = remove_at(child, rest, destination);
            if child.is_empty() {
                *slot = None;
            }
            found
        }
        _ => {
            let Some(child) = node.words.get_mut(word) else {
                return false;
            };
            let found = remove_at(child, rest, destination);
            if child.is_empty() {
                node.words.remove(word);
            }
            found
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(binding_key: &str, routing_key: &str) -> bool {
        let mut trie = TopicTrie::new();
        trie.insert(binding_key.as_bytes(), ());
        let mut out = Vec::new();
        trie.route(routing_key.as_bytes(), &mut out);
        !out.is_empty()
    }

    fn assert_matches(binding_key: &str, yes: &[&str], no: &[&str]) {
        for key in yes {
            assert!(
                matches(binding_key, key),
                "{binding_key:?} should match {key:?}"
            );
        }
        for key in no {
            assert!(
                !matches(binding_key, key),
                "{binding_key:?} should not match {key:?}"
            );
        }
    }

    #[test]
    fn literal_binding_matches_only_the_same_words() {
        assert_matches(
            "a.b",
            &["a.b"],
            &["a", "a.b.c", "a.bc", "ab", "a.b.", ".a.b", "A.b"],
        );
    }

    #[test]
    fn star_matches_exactly_one_word() {
        assert_matches("*", &["a", "*", "#", "abc"], &["", ".", "a.b"]);
        assert_matches("a.*", &["a.b", "a.", "a.*"], &["a", "a.b.c", "b.a"]);
        assert_matches("*.*", &["a.b", ".", "a.", ".b"], &["a", "", "a.b.c"]);
    }

    #[test]
    fn hash_alone_matches_every_key_including_the_empty_one() {
        assert_matches("#", &["", "a", "a.b.c", ".", "..", "#", "*"], &[]);
    }

    #[test]
    fn hash_hash_matches_like_a_single_hash() {
        assert_matches("#.#", &["", "a", "a.b.c", "."], &[]);
        assert_matches(
            "a.#.#.b",
            &["a.b", "a.x.b", "a.x.y.b"],
            &["a", "b", "a.b.c"],
        );
    }

    #[test]
    fn trailing_hash_matches_zero_or_more_words_after_the_prefix() {
        assert_matches("a.#", &["a", "a.b", "a.b.c", "a."], &["", "b", "ab", "b.a"]);
    }

    #[test]
    fn leading_hash_matches_zero_or_more_words_before_the_suffix() {
        assert_matches("#.a", &["a", "x.a", "x.y.a", ".a"], &["", "a.x", "xa"]);
    }

    #[test]
    fn inner_hash_matches_zero_or_more_words_between() {
        assert_matches(
            "a.#.b",
            &["a.b", "a.x.b", "a.x.y.b", "a..b", "a.b.b"],
            &["a", "b", "a.b.c", "a.bb"],
        );
        assert_matches(
            "#.b.#",
            &["b", "a.b", "b.c", "a.b.c", "b.b"],
            &["", "a.c", "ab"],
        );
    }

    #[test]
    fn star_then_hash_needs_at_least_one_word() {
        assert_matches("*.#", &["a", "a.b", "."], &[""]);
        assert_matches("#.*", &["a", "a.b", "."], &[""]);
        assert_matches("a.*.#", &["a.b", "a.b.c"], &["a", "b.c"]);
    }

    #[test]
    fn empty_binding_key_matches_only_the_empty_routing_key() {
        assert_matches("", &[""], &[".", "a", "*", "#"]);
    }

    #[test]
    fn empty_words_are_real_words() {
        assert_matches("a..b", &["a..b"], &["a.b", "a...b"]);
        assert_matches("a.*.b", &["a..b", "a.x.b"], &["a.b"]);
        assert_matches(".", &["."], &["", "a", ".."]);
        assert_matches(".a", &[".a"], &["a"]);
        assert_matches("*.a", &[".a", "x.a"], &["a"]);
    }

    #[test]
    fn wildcard_characters_inside_a_word_are_literal() {
        assert_matches("a#", &["a#"], &["a", "a.b", "ab"]);
        assert_matches("a*", &["a*"], &["ab", "a"]);
        assert_matches("#a.*", &["#a.x"], &["a.x", "b.a.x"]);
    }

    #[test]
    fn routing_key_wildcards_are_plain_words() {
        assert_matches("a.b", &[], &["a.*", "a.#", "#", "*.b"]);
        assert_matches("a.*", &["a.*", "a.#"], &["a.*.b"]);
    }

    #[test]
    fn words_are_compared_as_bytes() {
        assert_matches("größe.*", &["größe.x"], &["grosse.x", "GRÖSSE.x"]);
    }

    /// Word-list matcher straight from the definition, to check the trie against.
    fn reference(pattern: &[&[u8]], key: &[&[u8]]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&b"#", rest)) => (0..=key.len()).any(|i| reference(rest, &key[i..])),
            Some((&b"*", rest)) => !key.is_empty() && reference(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && reference(rest, &key[1..]),
        }
    }

    fn split(key: &str) -> Vec<&[u8]> {
        if key.is_empty() {
            Vec::new()
        } else {
            key.as_bytes().split(|&b| b == b'.').collect()
        }
    }

    /// Every dotted key of 0 to `max` words over `alphabet`.
    fn keys(alphabet: &[&str], max: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut level: Vec<Vec<&str>> = vec![vec![]];
        for _ in 0..max {
            let mut next = Vec::new();
            for words in &level {
                for w in alphabet {
                    let mut longer = words.clone();
                    longer.push(w);
                    next.push(longer);
                }
            }
            all.extend(next.iter().map(|w| w.join(".")).filter(|k| !k.is_empty()));
            level = next;
        }
        all.sort();
        all.dedup();
        all
    }

    #[test]
    fn trie_agrees_with_the_definition_on_every_small_pattern_and_key() {
        let patterns = keys(&["a", "b", "", "*", "#"], 4);
        let routing_keys = keys(&["a", "b", "", "*"], 4);
        // All patterns in one trie, each bound to its own index: checks the shared paths too.
        let mut trie = TopicTrie::new();
        for (i, p) in patterns.iter().enumerate() {
            trie.insert(p.as_bytes(), i);
        }
        for key in &routing_keys {
            let mut out = Vec::new();
            trie.route(key.as_bytes(), &mut out);
            out.sort_unstable();
            out.dedup();
            let expected: Vec<usize> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| reference(&split(p), &split(key)))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(out, expected, "routing key {key:?}");
        }
    }

    #[test]
    fn removing_every_binding_leaves_an_empty_trie() {
        let patterns = keys(&["a", "", "*", "#"], 3);
        let mut trie = TopicTrie::new();
        for p in &patterns {
            trie.insert(p.as_bytes(), 1u8);
            trie.insert(p.as_bytes(), 2u8);
        }
        for p in &patterns {
            assert!(trie.remove(p.as_bytes(), &1), "{p:?}");
        }
        let mut out = Vec::new();
        trie.route(b"a.a", &mut out);
        assert!(out.iter().all(|&d| d == 2));
        assert!(!out.is_empty());
        for p in &patterns {
            assert!(trie.remove(p.as_bytes(), &2), "{p:?}");
        }
        assert!(trie.is_empty());
        for p in &patterns {
            assert!(!trie.remove(p.as_bytes(), &2), "{p:?} removed twice");
        }
    }

    #[test]
    fn a_destination_stays_until_its_last_binding_on_a_path_is_removed() {
        let mut trie = TopicTrie::new();
        trie.insert(b"a.#", "q");
        trie.insert(b"a.#.#", "q"); // same path once collapsed
        assert!(trie.remove(b"a.#", &"q"));
        let mut out = Vec::new();
        trie.route(b"a.b", &mut out);
        assert_eq!(out, ["q"]);
        assert!(trie.remove(b"a.#.#", &"q"));
        assert!(trie.is_empty());
    }

    #[test]
    fn removing_an_unknown_binding_reports_false_and_keeps_the_trie() {
        let mut trie = TopicTrie::new();
        trie.insert(b"a.b", "q");
        assert!(!trie.remove(b"a.c", &"q"));
        assert!(!trie.remove(b"a.b", &"other"));
        assert!(!trie.remove(b"a.*", &"q"));
        assert!(!trie.remove(b"a", &"q"));
        let mut out = Vec::new();
        trie.route(b"a.b", &mut out);
        assert_eq!(out, ["q"]);
    }

    #[test]
    fn long_keys_against_many_hashes_finish() {
        // Without collapsing, `#.#.#...` against a long key would try every split of the key.
        let mut trie = TopicTrie::new();
        let pattern = vec!["#"; 64].join(".") + ".z";
        trie.insert(pattern.as_bytes(), "q");
        let key = vec!["w"; 200].join(".");
        let mut out = Vec::new();
        trie.route(key.as_bytes(), &mut out);
        assert!(out.is_empty());
        trie.route((key + ".z").as_bytes(), &mut out);
        assert_eq!(out, ["q"]);
    }
}
