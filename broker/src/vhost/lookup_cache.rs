//! A channel's memory of its last lookup of an exchange or queue by name.
//!
//! Publishers nearly always send to the same exchange (and, through the default exchange, the
//! same queue) many times in a row. Remembering the last answer skips a UTF-8 check, a hash and
//! a registry shard lock per publish. A remembered answer is used only while the vhost's
//! removal count is what it was when the lookup was made, so a deleted (and perhaps
//! re-declared) exchange or queue is never used after its deletion was seen.

use std::sync::Arc;

pub struct LookupCache<T> {
    last: Option<Remembered<T>>,
}

struct Remembered<T> {
    name: Box<[u8]>,
    found: Arc<T>,
    removals: u64,
}

impl<T> std::fmt::Debug for LookupCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.last.as_ref().map(|r| String::from_utf8_lossy(&r.name));
        f.debug_struct("LookupCache").field("name", &name).finish()
    }
}

impl<T> Default for LookupCache<T> {
    fn default() -> Self {
        Self { last: None }
    }
}

impl<T> LookupCache<T> {
    /// The remembered answer for `name`, if nothing was removed from the vhost since.
    pub fn get(&self, name: &[u8], removals: u64) -> Option<&Arc<T>> {
        self.last
            .as_ref()
            .filter(|r| r.removals == removals && *r.name == *name)
            .map(|r| &r.found)
    }

    /// Remembers `found` for `name`; `removals` must have been read before the lookup.
    pub fn remember(&mut self, name: &[u8], found: &Arc<T>, removals: u64) {
        match &mut self.last {
            Some(r) if *r.name == *name => {
                r.found = Arc::clone(found);
                r.removals = removals;
            }
            slot => {
                *slot = Some(Remembered {
                    name: name.into(),
                    found: Arc::clone(found),
                    removals,
                })
            }
        }
    }
}
