//! A pod's SDK asking the agent for credentials, by botocore's container
//! provider rules (`ContainerMetadataFetcher`): up to 3 attempts over a
//! keep-alive connection (urllib3's pool), each with a 2 s timeout, and a 1 s sleep after every failed
//! attempt (the last one too, before the SDK gives up). A non-200 answer, a
//! connection error and a timeout are all failures.
//!
//! [`until_served`] adds the application around it: when the SDK gives up,
//! the application asks the SDK again after `app_pause`, until it is served
//! or the deadline passes. "Served" is the first 200.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::Conn;

#[derive(Debug, Clone, Copy)]
pub struct SdkRules {
    pub attempts: u32,
    pub pause: Duration,
    pub timeout: Duration,
}

impl SdkRules {
    pub const BOTOCORE: SdkRules = SdkRules {
        attempts: 3,
        pause: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
    };
}

/// What one attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Status(u16),
    Timeout,
    ConnectError,
}

impl Seen {
    pub fn ok(self) -> bool {
        self == Seen::Status(200)
    }
}

/// One pod's history: when it first asked, each attempt (sent at, seen),
/// how often the SDK gave up, and when it was served.
#[derive(Debug, Clone)]
pub struct ClientLog {
    pub arrived: Duration,
    pub attempts: Vec<(Duration, Seen)>,
    pub give_ups: u32,
    pub served: Option<Duration>,
}

/// The SDK's HTTP session: one keep-alive connection, replaced after an
/// error or a timeout (a late answer must not be read as the next one).
#[derive(Default)]
pub struct Session {
    conn: Option<Conn>,
}

impl Session {
    async fn attempt(&mut self, addr: SocketAddr, token: &str, timeout: Duration) -> Seen {
        let once = async {
            // A pooled connection the server closed meanwhile is retried on
            // a new one, as urllib3 does, without counting as an attempt.
            if let Some(mut conn) = self.conn.take().filter(|c| !c.closed())
                && let Ok(r) = conn.credentials(token).await
            {
                self.conn = Some(conn);
                return Ok(r);
            }
            let mut conn = Conn::connect(addr).await?;
            let r = conn.credentials(token).await?;
            self.conn = Some(conn);
            Ok::<_, std::io::Error>(r)
        };
        match tokio::time::timeout(timeout, once).await {
            Err(_) => {
                self.conn = None;
                Seen::Timeout
            }
            Ok(Err(_)) => Seen::ConnectError,
            Ok(Ok(r)) => Seen::Status(r.status),
        }
    }

    /// The SDK's credential fetch; true when served.
    pub async fn fetch(
        &mut self,
        addr: SocketAddr,
        token: &str,
        rules: SdkRules,
        start: Instant,
        log: &mut ClientLog,
    ) -> bool {
        for _ in 0..rules.attempts.max(1) {
            let sent = start.elapsed();
            let seen = self.attempt(addr, token, rules.timeout).await;
            log.attempts.push((sent, seen));
            if seen.ok() {
                log.served = Some(start.elapsed());
                return true;
            }
            tokio::time::sleep(rules.pause).await;
        }
        log.give_ups += 1;
        false
    }
}

/// The application: asks the SDK at `arrive` (after `start`), again
/// `app_pause` after each give-up, until served or `deadline`.
pub async fn until_served(
    addr: SocketAddr,
    token: &str,
    rules: SdkRules,
    app_pause: Duration,
    start: Instant,
    arrive: Duration,
    deadline: Duration,
) -> ClientLog {
    tokio::time::sleep_until(start + arrive).await;
    let mut log = ClientLog {
        arrived: start.elapsed(),
        attempts: Vec::new(),
        give_ups: 0,
        served: None,
    };
    let mut session = Session::default();
    while start.elapsed() < deadline {
        if session.fetch(addr, token, rules, start, &mut log).await {
            break;
        }
        tokio::time::sleep(app_pause).await;
    }
    log
}

/// Attempts by what they saw: 200, 429, 5xx, other statuses, timeouts,
/// connection errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeenCounts {
    pub ok: u64,
    pub throttled: u64,
    pub server_error: u64,
    pub other: u64,
    pub timeouts: u64,
    pub connect_errors: u64,
}

impl SeenCounts {
    pub fn add(&mut self, seen: Seen) {
        match seen {
            Seen::Status(200) => self.ok += 1,
            Seen::Status(429) => self.throttled += 1,
            Seen::Status(s) if s >= 500 => self.server_error += 1,
            Seen::Status(_) => self.other += 1,
            Seen::Timeout => self.timeouts += 1,
            Seen::ConnectError => self.connect_errors += 1,
        }
    }

    pub fn of<'a>(seen: impl IntoIterator<Item = &'a Seen>) -> Self {
        let mut c = Self::default();
        for s in seen {
            c.add(*s);
        }
        c
    }

    pub fn total(&self) -> u64 {
        self.ok
            + self.throttled
            + self.server_error
            + self.other
            + self.timeouts
            + self.connect_errors
    }
}
