//! One cached credential and the time rules that apply to it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;

use super::MIN_REMAINING;
use crate::key::TokenRef;
use crate::token::TokenHash;

pub(super) struct Entry {
    pub(super) body: Bytes,
    pub(super) expires_ms: u64,
    /// Served until then; moved forward only while EKS Auth fails recoverably.
    pub(super) renew_at_ms: AtomicU64,
    pub(super) refresh_at_ms: AtomicU64,
    /// Read by a request since it was (re)fetched, or fetched for one: only
    /// such entries are refreshed ahead, so pods that stopped asking age out
    /// after at most one renewal (upstream #171).
    pub(super) read: AtomicBool,
    pub(super) failures: AtomicU32,
    /// First bytes of `token.hash`, checked without the lock on every hit.
    pub(super) token_tag: AtomicU64,
    pub(super) token: Mutex<TokenRef>,
    pub(super) association_id: Option<Box<str>>,
}

impl Entry {
    pub(super) fn servable(&self, now_ms: u64) -> bool {
        now_ms < self.renew_at_ms.load(Ordering::Relaxed) && self.valid(now_ms)
    }

    pub(super) fn valid(&self, now_ms: u64) -> bool {
        now_ms + (MIN_REMAINING.as_millis() as u64) < self.expires_ms
    }
}

/// The first 8 bytes of a token hash: compared without the token lock on
/// every hit to notice a rotated token.
pub(super) fn tag(hash: &TokenHash) -> u64 {
    u64::from_le_bytes(
        hash.0[..8]
            .try_into()
            .expect("a SHA-256 digest is longer than 8 bytes"),
    )
}
