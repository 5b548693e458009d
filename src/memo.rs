//! The admitted-token memo: raw token → what admission computed for it, so
//! a token is parsed, hashed with SHA-256 and (with keys) signature-checked
//! once, not per request.
//!
//! Hot-path shape: one keyed hash of the token (ahash, random per process,
//! so pods cannot aim collisions), a read lock on one of 64 shards, and a
//! byte comparison of the whole token: only byte-equal tokens match.
//! Bounded (at most 1.25 × the capacity): a full shard first drops tokens
//! past their `exp`, then an arbitrary eighth of itself (a dropped token is
//! simply admitted again).

use std::sync::{Arc, RwLock};

use hashbrown::HashTable;

const SHARDS: usize = 64;

struct Slot<V> {
    hash: u64,
    /// Shared with whoever else keeps the token (the credential cache keeps
    /// it for refreshes), so a token is stored once.
    token: Arc<str>,
    /// Token `exp` (epoch seconds), for eviction.
    expires: i64,
    value: V,
}

pub struct Memo<V> {
    hasher: ahash::RandomState,
    shards: Box<[RwLock<HashTable<Slot<V>>>]>,
    per_shard: usize,
}

impl<V: Clone> Memo<V> {
    pub fn new(capacity: u64) -> Self {
        Self::with_hasher(capacity, ahash::RandomState::new())
    }

    fn with_hasher(capacity: u64, hasher: ahash::RandomState) -> Self {
        // Tokens spread unevenly over shards; 25 % slack per shard lets the
        // memo hold about `capacity` tokens, and never more than 1.25 × that.
        let per_shard = (capacity as usize * 5 / 4).div_ceil(SHARDS).max(1);
        Self {
            hasher,
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            per_shard,
        }
    }

    fn locate(&self, token: &[u8]) -> (u64, &RwLock<HashTable<Slot<V>>>) {
        let hash = self.hasher.hash_one(token);
        (hash, &self.shards[(hash >> 58) as usize % SHARDS])
    }

    pub fn get(&self, token: &[u8]) -> Option<V> {
        let (hash, shard) = self.locate(token);
        let table = shard.read().expect("memo lock poisoned");
        table
            .find(hash, |s| s.hash == hash && s.token.as_bytes() == token)
            .map(|s| s.value.clone())
    }

    pub fn insert(&self, token: Arc<str>, expires: i64, value: V, now_secs: i64) {
        let (hash, shard) = self.locate(token.as_bytes());
        let mut table = shard.write().expect("memo lock poisoned");
        if let Ok(mut existing) = table.find_entry(hash, |s| s.hash == hash && s.token == token) {
            existing.get_mut().value = value;
            return;
        }
        if table.len() >= self.per_shard {
            table.retain(|s| s.expires > now_secs);
            if table.len() >= self.per_shard {
                let mut drop = (self.per_shard / 8).max(1);
                table.retain(|_| {
                    if drop > 0 {
                        drop -= 1;
                        false
                    } else {
                        true
                    }
                });
            }
        }
        table.insert_unique(
            hash,
            Slot {
                hash,
                token,
                expires,
                value,
            },
            |s| s.hash,
        );
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().expect("memo lock poisoned").len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_byte_equal_tokens_match() {
        let m = Memo::new(100);
        m.insert("a.b.c".into(), 100, 1, 0);
        assert_eq!(m.get(b"a.b.c"), Some(1));
        assert_eq!(m.get(b"a.b.C"), None);
        assert_eq!(m.get(b"a.b.c "), None);
        m.insert("a.b.c".into(), 100, 2, 0);
        assert_eq!(m.get(b"a.b.c"), Some(2));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn bounded_and_drops_expired_first() {
        // A fixed hasher: which tokens share a shard is the same every run.
        let seeded = || ahash::RandomState::with_seeds(1, 2, 3, 4);
        let m = Memo::with_hasher(64 * 4, seeded());
        let per_shard = m.per_shard;
        let live: Vec<String> = (0..64).map(|i| format!("live-{i}")).collect();
        for (i, token) in live.iter().enumerate() {
            m.insert(token.as_str().into(), 1000, i, 50);
            for j in 0..40 {
                m.insert(format!("expired-{i}-{j}").into(), 10, j, 50);
            }
        }
        // With this hasher no shard holds more live tokens than it may keep,
        // so expired tokens are the only ones ever dropped.
        let mut per = vec![0; SHARDS];
        for token in &live {
            per[(m.locate(token.as_bytes()).0 >> 58) as usize % SHARDS] += 1;
        }
        assert!(per.iter().all(|n| *n < per_shard), "{per:?}");
        for (i, token) in live.iter().enumerate() {
            assert_eq!(m.get(token.as_bytes()), Some(i), "{token} survived");
        }
        assert!(m.len() <= 64 * 5, "{}", m.len());

        // Nothing expired left: a full shard drops an eighth of itself.
        let n = Memo::with_hasher(6400, seeded());
        for i in 0..50_000 {
            n.insert(format!("t-{i}").into(), 1000, i, 50);
        }
        assert!(n.len() <= 8000, "at most 1.25 x the capacity: {}", n.len());
        assert!(n.len() >= 6400 * 7 / 8, "not emptied: {}", n.len());
    }
}
