//! The admitted-token memo: raw token → what admission computed for it, so
//! a token is parsed, hashed with SHA-256 and (with keys) signature-checked
//! once, not per request. Only confirmed tokens are kept (admission decides:
//! verified with the keys, or answered with credentials by EKS Auth), so a
//! pod sending forged tokens fills nothing here.
//!
//! Hot-path shape: one keyed hash of the token (ahash, random per process,
//! so pods cannot aim collisions), a read lock on one of 64 shards, and a
//! byte comparison of the whole token: only byte-equal tokens match.
//! Bounded in entries and in bytes (each at most 1.25 × its budget): a
//! full shard first drops tokens past their `exp`, then an arbitrary eighth
//! of itself (a dropped token is simply admitted again). An entry costs its
//! token's length plus [`ENTRY_OVERHEAD`].

use std::sync::{Arc, RwLock};

use hashbrown::HashTable;

const SHARDS: usize = 64;

/// What an entry costs besides its token (slot, admission result, table).
pub const ENTRY_OVERHEAD: usize = 256;

struct Slot<V> {
    hash: u64,
    /// Shared with whoever else keeps the token (the credential cache keeps
    /// it for refreshes), so a token is stored once.
    token: Arc<str>,
    /// Token `exp` (epoch seconds), for eviction.
    expires: i64,
    value: V,
}

struct Shard<V> {
    table: HashTable<Slot<V>>,
    bytes: usize,
}

pub struct Memo<V> {
    hasher: ahash::RandomState,
    shards: Box<[RwLock<Shard<V>>]>,
    per_shard: usize,
    bytes_per_shard: usize,
}

fn cost(token: &str) -> usize {
    token.len() + ENTRY_OVERHEAD
}

impl<V: Clone> Memo<V> {
    /// At most about `capacity` tokens and `bytes` bytes.
    pub fn new(capacity: u64, bytes: usize) -> Self {
        Self::with_hasher(capacity, bytes, ahash::RandomState::new())
    }

    fn with_hasher(capacity: u64, bytes: usize, hasher: ahash::RandomState) -> Self {
        // Tokens spread unevenly over shards; 25 % slack per shard lets the
        // memo hold about `capacity` tokens, and never more than 1.25 × that
        // (likewise for bytes).
        let per_shard = (capacity as usize * 5 / 4).div_ceil(SHARDS).max(1);
        let bytes_per_shard = (bytes / 4 * 5).div_ceil(SHARDS).max(1);
        Self {
            hasher,
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(Shard {
                        table: HashTable::new(),
                        bytes: 0,
                    })
                })
                .collect(),
            per_shard,
            bytes_per_shard,
        }
    }

    fn locate(&self, token: &[u8]) -> (u64, &RwLock<Shard<V>>) {
        let hash = self.hasher.hash_one(token);
        (hash, &self.shards[(hash >> 58) as usize % SHARDS])
    }

    pub fn get(&self, token: &[u8]) -> Option<V> {
        let (hash, shard) = self.locate(token);
        let shard = shard.read().expect("memo lock poisoned");
        shard
            .table
            .find(hash, |s| s.hash == hash && s.token.as_bytes() == token)
            .map(|s| s.value.clone())
    }

    pub fn insert(&self, token: Arc<str>, expires: i64, value: V, now_secs: i64) {
        let (hash, shard) = self.locate(token.as_bytes());
        let mut shard = shard.write().expect("memo lock poisoned");
        let Shard { table, bytes } = &mut *shard;
        if let Ok(mut existing) = table.find_entry(hash, |s| s.hash == hash && s.token == token) {
            existing.get_mut().value = value;
            return;
        }
        let added = cost(&token);
        let full = |table: &HashTable<Slot<V>>, bytes: usize| {
            table.len() >= self.per_shard || bytes + added > self.bytes_per_shard
        };
        if full(table, *bytes) {
            table.retain(|s| {
                let keep = s.expires > now_secs;
                if !keep {
                    *bytes -= cost(&s.token);
                }
                keep
            });
            while !table.is_empty() && full(table, *bytes) {
                let mut drop = (table.len() / 8).max(1);
                table.retain(|s| {
                    if drop > 0 {
                        drop -= 1;
                        *bytes -= cost(&s.token);
                        false
                    } else {
                        true
                    }
                });
            }
        }
        *bytes += added;
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
            .map(|s| s.read().expect("memo lock poisoned").table.len())
            .sum()
    }

    /// Bytes held, as counted against the budget.
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().expect("memo lock poisoned").bytes)
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
        let m = Memo::new(100, 1 << 20);
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
        let m = Memo::with_hasher(64 * 4, usize::MAX / 2, seeded());
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
        let n = Memo::with_hasher(6400, usize::MAX / 2, seeded());
        for i in 0..50_000 {
            n.insert(format!("t-{i}").into(), 1000, i, 50);
        }
        assert!(n.len() <= 8000, "at most 1.25 x the capacity: {}", n.len());
        assert!(n.len() >= 6400 * 7 / 8, "not emptied: {}", n.len());
    }

    #[test]
    fn bounded_in_bytes_whatever_the_token_sizes() {
        let budget = 1 << 20;
        let m = Memo::new(1_000_000, budget);
        for i in 0..2000 {
            // ~12 KB tokens, each distinct.
            let token = format!("{i:08}{}", "x".repeat(12_000));
            m.insert(token.into(), 1000, i, 0);
        }
        assert!(m.bytes() <= budget * 5 / 4, "{} bytes", m.bytes());
        assert!(m.bytes() >= budget / 2, "not emptied: {} bytes", m.bytes());
        let counted: usize = m.len() * (8 + 12_000 + ENTRY_OVERHEAD);
        assert_eq!(m.bytes(), counted, "every entry counted once");
    }
}
