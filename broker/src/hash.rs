//! The hasher behind every map the broker looks up per frame or per message.
//!
//! Keys are short and picked by clients (exchange and queue names, routing words, channel
//! numbers, consumer tags). std's SipHash cost about a tenth of the broker's CPU at full
//! publish rate; foldhash is several times cheaper on such keys and still seeded at random
//! per map, so a client cannot aim its names at one bucket without first learning the seed.

pub type HashState = foldhash::fast::RandomState;

pub type HashMap<K, V> = std::collections::HashMap<K, V, HashState>;

pub type HashSet<K> = std::collections::HashSet<K, HashState>;

/// A registry shared between connections (exchanges, queues, vhosts).
pub type DashMap<K, V> = dashmap::DashMap<K, V, HashState>;
