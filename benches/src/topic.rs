//! The `topic-10k` workload: a topic exchange with many bindings, and routing keys drawn at
//! random so that each matches about one binding and some match none.
//!
//! Keys look like application events, `<region>.<service>.<event>`, with a few other shapes.
//! The bindings come in five families over disjoint words, so that a key built for one
//! binding matches that binding and no other:
//!
//! | family | share | binding | keys that match it |
//! |---|---|---|---|
//! | A | 40% | `reg{r}.svc{s}.*` | `reg{r}.svc{s}.<any event>` |
//! | B | 10% | `reg{r}.svc{s}.#` | `reg{r}.svc{s}`, `reg{r}.svc{s}.<event>`, `reg{r}.svc{s}.<event>.v{n}` |
//! | C | 40% | `reg{r}.svc{s}.<one event>` (literal) | that key only |
//! | D | 5% | `*.job{j}.done` | `batch{b}.job{j}.done` |
//! | E | 5% | `#.alert{k}` | `alert{k}`, `host{h}.alert{k}`, `dc{d}.host{h}.alert{k}` |
//!
//! Families A, B and C take consecutive regions of 100 services each, so their bindings never
//! share a region. Keys that match nothing (`--topic-unmatched`, 10% by default) are family C
//! keys with another event than the bound one, or keys in a region past the last bound one.
//! Binding `i` goes to queue `i % queues`, so every queue gets a mix of all families.
//!
//! Everything is generated once before the run from a fixed seed: the publisher only walks a
//! table of ready-made keys (in random order), so picking a key costs an index increment.

/// Services per region in families A, B and C.
const SERVICES: usize = 100;
const EVENTS: [&str; 8] = [
    "created", "updated", "deleted", "shipped", "paid", "refunded", "viewed", "archived",
];

/// splitmix64: a small, fast generator, good enough for picking keys (not for anything else).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the bias of a modulo is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// How the bindings split into families (counts), for a total.
#[derive(Debug, Clone, Copy)]
struct Families {
    a: usize,
    b: usize,
    c: usize,
    d: usize,
    e: usize,
}

impl Families {
    fn split(total: usize) -> Self {
        let a = total * 40 / 100;
        let b = total * 10 / 100;
        let d = total * 5 / 100;
        let e = total * 5 / 100;
        Families {
            a,
            b,
            c: total - a - b - d - e,
            d,
            e,
        }
    }

    /// First region of B and C, and the first region no binding uses.
    fn regions(&self) -> (usize, usize, usize) {
        let regions = |n: usize| n.div_ceil(SERVICES);
        let b0 = regions(self.a);
        let c0 = b0 + regions(self.b);
        (b0, c0, c0 + regions(self.c))
    }
}

/// The literal event bound for region `r`, service `s` in family C.
fn bound_event(r: usize, s: usize) -> usize {
    (r * 7 + s) % EVENTS.len()
}

/// Bindings and the key table of one run.
pub struct TopicPlan {
    /// `(pattern, queue index)`.
    pub bindings: Vec<(String, usize)>,
    /// Every key, back to back; key `i` is `data[offsets[i]..offsets[i + 1]]`.
    data: Vec<u8>,
    offsets: Vec<u32>,
    /// How many bindings key `i` matches (0 or 1 by construction).
    matches: Vec<u8>,
}

impl TopicPlan {
    /// `bindings` over `queues` queues, `keys` keys (rounded up to a power of two), of which a
    /// fraction `unmatched` matches no binding.
    pub fn new(bindings: usize, queues: usize, keys: usize, unmatched: f64, seed: u64) -> Self {
        let fam = Families::split(bindings);
        let (b0, c0, end) = fam.regions();
        let mut patterns = Vec::with_capacity(bindings);
        for i in 0..fam.a {
            patterns.push(format!("reg{}.svc{}.*", i / SERVICES, i % SERVICES));
        }
        for i in 0..fam.b {
            patterns.push(format!("reg{}.svc{}.#", b0 + i / SERVICES, i % SERVICES));
        }
        for i in 0..fam.c {
            let (r, s) = (c0 + i / SERVICES, i % SERVICES);
            patterns.push(format!("reg{r}.svc{s}.{}", EVENTS[bound_event(r, s)]));
        }
        for j in 0..fam.d {
            patterns.push(format!("*.job{j}.done"));
        }
        for k in 0..fam.e {
            patterns.push(format!("#.alert{k}"));
        }
        let queues = queues.max(1);
        let bindings = patterns
            .into_iter()
            .enumerate()
            .map(|(i, p)| (p, i % queues))
            .collect();

        let n = keys.max(1).next_power_of_two();
        let mut rng = Rng(seed);
        let mut plan = TopicPlan {
            bindings,
            data: Vec::with_capacity(n * 24),
            offsets: Vec::with_capacity(n + 1),
            matches: Vec::with_capacity(n),
        };
        plan.offsets.push(0);
        let total = fam.a + fam.b + fam.c + fam.d + fam.e;
        for _ in 0..n {
            let ev = |rng: &mut Rng| EVENTS[rng.below(EVENTS.len())];
            let (key, hits) = if total == 0 || rng.chance(unmatched) {
                // No binding: a family C key with another event, or an unbound region.
                if fam.c > 0 && rng.chance(0.5) {
                    let i = rng.below(fam.c);
                    let (r, s) = (c0 + i / SERVICES, i % SERVICES);
                    let other =
                        (bound_event(r, s) + 1 + rng.below(EVENTS.len() - 1)) % EVENTS.len();
                    (format!("reg{r}.svc{s}.{}", EVENTS[other]), 0)
                } else {
                    let r = end + rng.below(10);
                    let s = rng.below(SERVICES);
                    (format!("reg{r}.svc{s}.{}", ev(&mut rng)), 0)
                }
            } else {
                // A random binding (so each family in proportion to its size), then a key for it.
                let i = rng.below(total);
                let (ab, abc, abcd) = (fam.a + fam.b, fam.a + fam.b + fam.c, total - fam.e);
                let key = if i < fam.a {
                    format!("reg{}.svc{}.{}", i / SERVICES, i % SERVICES, ev(&mut rng))
                } else if i < ab {
                    let i = i - fam.a;
                    let (r, s) = (b0 + i / SERVICES, i % SERVICES);
                    match rng.below(3) {
                        0 => format!("reg{r}.svc{s}"),
                        1 => format!("reg{r}.svc{s}.{}", ev(&mut rng)),
                        _ => format!("reg{r}.svc{s}.{}.v{}", ev(&mut rng), rng.below(4)),
                    }
                } else if i < abc {
                    let i = i - ab;
                    let (r, s) = (c0 + i / SERVICES, i % SERVICES);
                    format!("reg{r}.svc{s}.{}", EVENTS[bound_event(r, s)])
                } else if i < abcd {
                    format!("batch{}.job{}.done", rng.below(1000), i - abc)
                } else {
                    let k = i - abcd;
                    match rng.below(3) {
                        0 => format!("alert{k}"),
                        1 => format!("host{}.alert{k}", rng.below(1000)),
                        _ => format!("dc{}.host{}.alert{k}", rng.below(10), rng.below(1000)),
                    }
                };
                (key, 1)
            };
            plan.data.extend_from_slice(key.as_bytes());
            plan.offsets.push(plan.data.len() as u32);
            plan.matches.push(hits);
        }
        plan
    }

    /// Number of keys (a power of two).
    pub fn len(&self) -> usize {
        self.matches.len()
    }

    /// Key `i`, with how many bindings it matches.
    #[inline]
    pub fn key(&self, i: usize) -> (&[u8], u8) {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        (&self.data[a..b], self.matches[i])
    }

    /// Fraction of keys that match a binding.
    pub fn matched_fraction(&self) -> f64 {
        let m: u64 = self.matches.iter().map(|&m| u64::from(m)).sum();
        m as f64 / self.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AMQP topic matching, the slow obvious way: `*` is one word, `#` zero or more.
    fn topic_match(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| topic_match(rest, &key[skip..])),
            Some((&"*", rest)) => !key.is_empty() && topic_match(rest, &key[1..]),
            Some((w, rest)) => key.first() == Some(w) && topic_match(rest, &key[1..]),
        }
    }

    #[test]
    fn the_matcher_follows_the_amqp_rules() {
        let m = |p: &str, k: &str| {
            topic_match(
                &p.split('.').collect::<Vec<_>>(),
                &k.split('.').collect::<Vec<_>>(),
            )
        };
        assert!(m("a.*.c", "a.b.c") && !m("a.*.c", "a.c"));
        assert!(m("a.#", "a") && m("a.#", "a.b.c") && m("#.c", "c") && m("#", "x.y"));
        assert!(!m("a.b", "a.b.c") && !m("*.b", "b"));
    }

    #[test]
    fn every_key_matches_exactly_the_bindings_it_was_built_for() {
        let plan = TopicPlan::new(10_000, 4, 1024, 0.1, 7);
        assert_eq!(plan.bindings.len(), 10_000);
        let patterns: Vec<Vec<&str>> = plan
            .bindings
            .iter()
            .map(|(p, _)| p.split('.').collect())
            .collect();
        for i in 0..plan.len() {
            let (key, hits) = plan.key(i);
            let key = std::str::from_utf8(key).unwrap();
            let words: Vec<&str> = key.split('.').collect();
            let n = patterns.iter().filter(|p| topic_match(p, &words)).count();
            assert_eq!(n, usize::from(hits), "key {key}");
        }
        let f = plan.matched_fraction();
        assert!((0.85..0.95).contains(&f), "matched fraction {f}");
    }

    #[test]
    fn bindings_are_distinct_and_spread_over_the_queues() {
        let plan = TopicPlan::new(10_000, 4, 16, 0.1, 1);
        let distinct: std::collections::HashSet<_> = plan.bindings.iter().map(|b| &b.0).collect();
        assert_eq!(distinct.len(), 10_000);
        for q in 0..4 {
            assert_eq!(plan.bindings.iter().filter(|b| b.1 == q).count(), 2_500);
        }
    }
}
