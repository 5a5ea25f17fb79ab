//! The response-header deadline of proxied requests, kept per client connection.
//!
//! A tokio timer per request costs a timer-wheel insert when it is first polled and a removal
//! when it is dropped, both under the runtime's timer lock. An HTTP/1 connection serves one
//! request at a time, so one timer per connection is re-armed for each request instead: moving a
//! pending timer to a later deadline is a single atomic update, and the wheel is touched again
//! only when the timer fires or a deadline moves earlier (a pool with a shorter timeout).
//!
//! It must never know what it is timing.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// `future` did not finish within the limit.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

/// One connection's timer; idle between requests.
#[derive(Default)]
pub struct ResponseTimer {
    parked: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl ResponseTimer {
    /// Runs `future` until it finishes or `limit` has passed, whichever comes first.
    pub async fn limit<F: Future>(&self, limit: Duration, future: F) -> Result<F::Output, Elapsed> {
        let deadline = Instant::now() + limit;
        let mut sleep = match self.take() {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let mut future = std::pin::pin!(future);
        let outcome = poll_fn(|cx| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Ok(output));
            }
            sleep.as_mut().poll(cx).map(|()| Err(Elapsed))
        })
        .await;
        // Dropped futures (a client that went away) drop their timer with them; the next request
        // then starts a new one.
        *self.lock() = Some(sleep);
        outcome
    }

    fn take(&self) -> Option<Pin<Box<Sleep>>> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Pin<Box<Sleep>>>> {
        self.parked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn times_out_and_rearms_for_the_next_request() {
        let timer = ResponseTimer::default();
        let slow = timer
            .limit(
                Duration::from_secs(1),
                tokio::time::sleep(Duration::from_secs(5)),
            )
            .await;
        assert_eq!(slow, Err(Elapsed));
        // The parked timer has fired; re-armed, it must wait its full limit again.
        let started = Instant::now();
        let quick = timer
            .limit(Duration::from_secs(3), async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                7
            })
            .await;
        assert_eq!(quick, Ok(7));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // A shorter limit than the pending deadline still applies.
        let short = timer
            .limit(Duration::from_millis(100), std::future::pending::<()>())
            .await;
        assert_eq!(short, Err(Elapsed));
        assert_eq!(started.elapsed(), Duration::from_millis(2100));
    }
}
