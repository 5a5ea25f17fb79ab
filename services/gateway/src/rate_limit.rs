//! Rate limits per client: which bucket a route draws from (pure), the quota syntax
//! (`100/s,burst=200`, `10/m`, `off`), who a client is for the limits ([`RateKey`]: the
//! authenticated caller on `/v1`, the address elsewhere, an IPv6 address by its /64), and the
//! keyed GCRA limiters that decide.
//!
//! It must never know how the client IP or the caller was found or how a refusal is rendered.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, RateLimiter};

use crate::config::RateLimitConfig;

/// The bucket a request draws from. Auth and chat completions are stricter than the rest, and a
/// request to them draws from the general bucket too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketKind {
    General,
    Auth,
    Chat,
}

impl BucketKind {
    pub fn name(self) -> &'static str {
        match self {
            BucketKind::General => "general",
            BucketKind::Auth => "auth",
            BucketKind::Chat => "chat",
        }
    }

    /// The stricter bucket for `path`, if it has one.
    pub fn special_for(path: &str) -> Option<BucketKind> {
        if path.starts_with("/api/auth/") || path == "/api/auth" {
            Some(BucketKind::Auth)
        } else if path.starts_with("/v1/chat/completions") || path.starts_with("/v1/completions") {
            Some(BucketKind::Chat)
        } else {
            None
        }
    }
}

/// `count` requests per `period`, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub count: NonZeroU32,
    pub period: Duration,
    pub burst: NonZeroU32,
}

impl Quota {
    /// Parses `N/s`, `N/m` or `N/h`, optionally followed by `,burst=B`; `off` is no limit.
    pub fn parse(text: &str) -> Result<Option<Quota>, String> {
        let text = text.trim();
        if text == "off" {
            return Ok(None);
        }
        let bad = || format!("`{text}` is not a rate such as `100/s`, `10/m,burst=5` or `off`");
        let (rate, burst) = match text.split_once(',') {
            Some((rate, burst)) => (rate.trim(), Some(burst.trim())),
            None => (text, None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(bad)?;
        let count: NonZeroU32 = count.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let burst = match burst {
            Some(burst) => burst
                .strip_prefix("burst=")
                .and_then(|b| b.trim().parse().ok())
                .ok_or_else(bad)?,
            None => count,
        };
        Ok(Some(Quota {
            count,
            period,
            burst,
        }))
    }

    fn to_governor(self) -> Option<governor::Quota> {
        governor::Quota::with_period(self.period / self.count.get())
            .map(|quota| quota.allow_burst(self.burst))
    }
}

/// Who draws from a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// A client address; IPv6 cut to its /64, the block one host or one customer gets.
    Address(IpAddr),
    /// An authenticated `/v1` caller (`Caller::key`), wherever its requests come from.
    Caller(Arc<str>),
}

impl RateKey {
    pub fn address(ip: IpAddr) -> Self {
        RateKey::Address(network_of(ip))
    }
}

/// The address a client is counted by: IPv4 as it is, IPv6 by its /64.
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
    }
}

/// The limiters, one per enabled bucket, keyed by client.
pub struct RateLimits {
    general: Option<DefaultKeyedRateLimiter<RateKey>>,
    auth: Option<DefaultKeyedRateLimiter<RateKey>>,
    chat: Option<DefaultKeyedRateLimiter<RateKey>>,
    clock: DefaultClock,
}

/// A refusal: which bucket ran dry and when to come back.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    pub bucket: BucketKind,
    pub retry_after: Duration,
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> Self {
        let limiter = |kind| {
            config
                .quota(kind)
                .and_then(Quota::to_governor)
                .map(RateLimiter::keyed)
        };
        RateLimits {
            general: limiter(BucketKind::General),
            auth: limiter(BucketKind::Auth),
            chat: limiter(BucketKind::Chat),
            clock: DefaultClock::default(),
        }
    }

    fn limiter(&self, kind: BucketKind) -> Option<&DefaultKeyedRateLimiter<RateKey>> {
        match kind {
            BucketKind::General => self.general.as_ref(),
            BucketKind::Auth => self.auth.as_ref(),
            BucketKind::Chat => self.chat.as_ref(),
        }
    }

    /// Takes one token for `client` from the buckets `path` draws from.
    pub fn check(&self, client: &RateKey, path: &str) -> Result<(), Refusal> {
        let kinds = [BucketKind::special_for(path), Some(BucketKind::General)];
        for kind in kinds.into_iter().flatten() {
            if let Some(limiter) = self.limiter(kind) {
                limiter.check_key(client).map_err(|not_until| Refusal {
                    bucket: kind,
                    retry_after: not_until.wait_time_from(self.clock.now()),
                })?;
            }
        }
        Ok(())
    }

    /// Forgets clients whose buckets are full again, so the maps do not grow forever.
    pub fn forget_idle_clients(&self) {
        for limiter in [&self.general, &self.auth, &self.chat]
            .into_iter()
            .flatten()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quotas() {
        let q = Quota::parse("100/s,burst=200").expect("valid").expect("on");
        assert_eq!(
            (q.count.get(), q.period, q.burst.get()),
            (100, Duration::from_secs(1), 200)
        );
        let q = Quota::parse("10/m").expect("valid").expect("on");
        assert_eq!((q.count.get(), q.burst.get()), (10, 10));
        assert_eq!(Quota::parse("off").expect("valid"), None);
        for bad in ["", "10", "0/s", "10/d", "10/s,burst", "10/s,burst=0", "x/s"] {
            assert!(Quota::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_pick_their_bucket() {
        assert_eq!(
            BucketKind::special_for("/api/auth/login"),
            Some(BucketKind::Auth)
        );
        assert_eq!(
            BucketKind::special_for("/v1/chat/completions"),
            Some(BucketKind::Chat)
        );
        assert_eq!(BucketKind::special_for("/api/chats"), None);
        assert_eq!(BucketKind::special_for("/v1/models"), None);
    }

    #[test]
    fn stricter_bucket_refuses_first_and_per_client() {
        let limits = RateLimits::new(&RateLimitConfig {
            general: Quota::parse("100/s").expect("valid"),
            auth: Quota::parse("2/m").expect("valid"),
            chat: None,
        });
        let a = RateKey::address([10, 0, 0, 1].into());
        let b = RateKey::address([10, 0, 0, 2].into());
        assert!(limits.check(&a, "/api/auth/login").is_ok());
        assert!(limits.check(&a, "/api/auth/login").is_ok());
        let refusal = limits.check(&a, "/api/auth/login").expect_err("third");
        assert_eq!(refusal.bucket, BucketKind::Auth);
        assert!(refusal.retry_after > Duration::from_secs(20), "{refusal:?}");
        assert!(limits.check(&a, "/api/items").is_ok());
        assert!(limits.check(&b, "/api/auth/login").is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let ip = |text: &str| text.parse::<IpAddr>().expect("ip");
        assert_eq!(
            RateKey::address(ip("2001:db8:1:2::1")),
            RateKey::address(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            RateKey::address(ip("2001:db8:1:2::1")),
            RateKey::address(ip("2001:db8:1:3::1"))
        );
        assert_eq!(network_of(ip("192.0.2.7")), ip("192.0.2.7"));
    }
}
