//! A token bucket shared by all clients (Go's `rate.Limiter`, which etcd's
//! tool uses for `--rate`): `rate` tokens a second, at most `burst` saved
//! up, full at the start. Each request takes one token and waits for it if
//! there is none; a request's slot is fixed when it asks, so the rate holds
//! on average even though timers are coarser than the gaps between slots.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A shared rate limiter; `unlimited()` never waits.
#[derive(Debug)]
pub struct Limiter {
    bucket: Option<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Limiter {
    /// At most `per_sec` requests a second with bursts of `burst` (at least
    /// 1); `per_sec` 0 means no limit (etcd's `--rate 0`).
    pub fn new(per_sec: u64, burst: u64) -> Limiter {
        if per_sec == 0 {
            return Limiter::unlimited();
        }
        let burst = burst.max(1) as f64;
        let bucket = Bucket { per_sec: per_sec as f64, burst, tokens: burst, last: Instant::now() };
        Limiter { bucket: Some(Mutex::new(bucket)) }
    }

    /// No limit.
    pub fn unlimited() -> Limiter {
        Limiter { bucket: None }
    }

    /// Waits for this request's slot.
    pub async fn wait(&self) {
        let Some(bucket) = &self.bucket else { return };
        let delay = {
            let mut b = bucket.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let refill = now.saturating_duration_since(b.last).as_secs_f64() * b.per_sec;
            b.tokens = (b.tokens + refill).min(b.burst) - 1.0;
            b.last = now;
            if b.tokens < 0.0 { Duration::from_secs_f64(-b.tokens / b.per_sec) } else { Duration::ZERO }
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_the_rate() {
        let limiter = Limiter::new(200, 1);
        let start = Instant::now();
        for _ in 0..41 {
            limiter.wait().await;
        }
        // 40 gaps of 5 ms after the first (free) token.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(195), "{took:?}");
        assert!(took < Duration::from_millis(1000), "{took:?}");
    }

    #[tokio::test]
    async fn unlimited_does_not_wait() {
        let limiter = Limiter::new(0, 1);
        let start = Instant::now();
        for _ in 0..1000 {
            limiter.wait().await;
        }
        assert!(start.elapsed() < Duration::from_millis(100));
    }
}
