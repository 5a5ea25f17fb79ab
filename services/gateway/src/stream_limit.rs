//! Per-caller concurrency on `/v1`: how many responses one authenticated caller may have open
//! at once. A permit is taken before the request goes upstream and travels with the response
//! body; it is given back when the body has been sent to its end or dropped (the client went
//! away), so a long SSE stream counts for as long as it runs.
//!
//! It must never know how callers are identified or how a refusal is rendered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The open responses of every caller that has one.
pub struct StreamLimits {
    per_caller: Option<u32>,
    open: Arc<Mutex<HashMap<Arc<str>, u32>>>,
}

/// One open response of `caller`; dropping it frees the slot.
pub struct StreamPermit {
    caller: Arc<str>,
    open: Arc<Mutex<HashMap<Arc<str>, u32>>>,
}

/// `caller` already has `limit` responses open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub limit: u32,
}

impl StreamLimits {
    /// `per_caller: None` lets every caller open as many as it likes.
    pub fn new(per_caller: Option<u32>) -> Self {
        StreamLimits {
            per_caller,
            open: Arc::default(),
        }
    }

    /// A permit for one more open response of `caller`, or `None` when there is no limit.
    pub fn acquire(&self, caller: &str) -> Result<Option<StreamPermit>, Busy> {
        let Some(limit) = self.per_caller else {
            return Ok(None);
        };
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let caller: Arc<str> = match open.get_key_value(caller) {
            Some((_, count)) if *count >= limit => return Err(Busy { limit }),
            Some((key, _)) => Arc::clone(key),
            None => Arc::from(caller),
        };
        *open.entry(Arc::clone(&caller)).or_insert(0) += 1;
        Ok(Some(StreamPermit {
            caller,
            open: Arc::clone(&self.open),
        }))
    }

    /// Callers with open responses (for tests and metrics).
    pub fn callers(&self) -> usize {
        self.open.lock().map_or(0, |open| open.len())
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = open.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                // Nobody's empty entry stays behind: the map holds only open responses.
                open.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_limit_and_its_slots_back() {
        let limits = StreamLimits::new(Some(2));
        let a1 = limits.acquire("a").expect("first");
        let _a2 = limits.acquire("a").expect("second");
        assert_eq!(limits.acquire("a").err(), Some(Busy { limit: 2 }));
        let _b = limits.acquire("b").expect("b is someone else");
        drop(a1);
        let _a3 = limits.acquire("a").expect("a slot came back");
        drop(_b);
        assert_eq!(limits.callers(), 1, "b's entry is gone");
        assert!(
            StreamLimits::new(None)
                .acquire("a")
                .expect("unlimited")
                .is_none()
        );
    }
}
