//! Rate limits (governor's GCRA), applied by [`super::authz`] before a
//! call reaches its handler:
//!
//! - **per source address**, on `Enrollment/Join` (open to anyone: a token
//!   guesser) and on calls refused for their certificate: `--join-rate`
//!   per minute, as many at once. Over it, the token is not even looked at.
//! - **per admin identity**, on `ServiceAdmin` and `ClusterAdmin`:
//!   `--api-rate` calls per second, twice that at once (a runaway script;
//!   one import of 10,000 services is one call). Plaintext listeners have
//!   no identities, so no per-identity limit.
//!
//! A refused call gets `RESOURCE_EXHAUSTED` naming the limit and when to
//! retry, also as `retry-after-ms` metadata for clients that back off.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tonic::Status;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// Idle keys are forgotten every this many checks, so a scan from many
/// addresses does not grow the table for good.
const SHRINK_EVERY: u64 = 4096;

/// The limits a controller enforces; 0 in a flag turns that one off.
pub struct RateLimits {
    sources: Option<Limit<IpAddr>>,
    admins: Option<Limit<String>>,
}

struct Limit<K: Hash + Eq + Clone> {
    limiter: Keyed<K>,
    /// "10 joins or failed authentications per minute from"
    what: String,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone + std::fmt::Display> Limit<K> {
    fn new(quota: Quota, what: String) -> Self {
        Limit {
            limiter: RateLimiter::keyed(quota),
            what,
            checks: AtomicU64::new(0),
        }
    }

    fn check(&self, key: &K) -> Result<(), Status> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SHRINK_EVERY == SHRINK_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            refused(&format!("{} {key}", self.what), wait)
        })
    }
}

fn refused(limit: &str, wait: Duration) -> Status {
    let ms = wait.as_millis().max(1);
    let mut status =
        Status::resource_exhausted(format!("rate limit: at most {limit}; retry in {ms} ms"));
    if let Ok(v) = ms.to_string().parse() {
        status
            .metadata_mut()
            .insert(lb_proto::client::RETRY_AFTER_METADATA, v);
    }
    status
}

impl RateLimits {
    /// `join_per_minute` per source address, `api_per_second` per admin.
    pub fn new(join_per_minute: u32, api_per_second: u32) -> Self {
        RateLimits {
            sources: NonZeroU32::new(join_per_minute).map(|n| {
                Limit::new(
                    Quota::per_minute(n),
                    format!("{n} joins or failed authentications per minute from"),
                )
            }),
            admins: NonZeroU32::new(api_per_second).map(|n| {
                let burst = n.saturating_mul(NonZeroU32::MIN.saturating_add(1));
                Limit::new(
                    Quota::per_second(n).allow_burst(burst),
                    format!("{n} calls per second (bursts of {burst}) by admin"),
                )
            }),
        }
    }

    /// No limits (tests of other things, and `RateLimits::new(0, 0)`).
    pub fn none() -> Self {
        RateLimits::new(0, 0)
    }

    /// A join, or a failed authentication, from `ip`.
    pub fn source(&self, ip: IpAddr) -> Result<(), Status> {
        self.sources.as_ref().map_or(Ok(()), |l| l.check(&ip))
    }

    /// An API call by admin `name`.
    pub fn admin(&self, name: &str) -> Result<(), Status> {
        self.admins
            .as_ref()
            .map_or(Ok(()), |l| l.check(&name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_over_its_rate_waits_and_others_do_not() {
        let limits = RateLimits::new(3, 0);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            limits.source(a).unwrap();
        }
        let e = limits.source(a).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().starts_with("rate limit: at most 3 joins or failed authentications per minute from 10.0.0.1; retry in "),
            "{}",
            e.message()
        );
        let wait = lb_proto::client::retry_after(&e).unwrap();
        assert!((15..=20).contains(&wait.as_secs()), "{wait:?}");
        limits.source(b).unwrap();
        // Off: nothing is limited.
        for _ in 0..100 {
            limits.admin("alice").unwrap();
        }
    }
}
