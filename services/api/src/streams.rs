//! The limit on concurrent LLM streams per user: a count per user behind a mutex, and a
//! [`StreamPermit`] that gives its slot back when dropped (however the stream ends).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct StreamLimiter {
    max_per_user: usize,
    open: Arc<Mutex<HashMap<Uuid, usize>>>,
}

/// One open stream; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamPermit {
    user: Uuid,
    open: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl StreamLimiter {
    pub fn new(max_per_user: usize) -> StreamLimiter {
        StreamLimiter {
            max_per_user,
            open: Arc::default(),
        }
    }

    /// A permit, or `None` when the user already has the maximum open.
    pub fn try_acquire(&self, user: Uuid) -> Option<StreamPermit> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(user).or_insert(0);
        if *count >= self.max_per_user {
            return None;
        }
        *count += 1;
        Some(StreamPermit {
            user,
            open: Arc::clone(&self.open),
        })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_counted_per_user_and_returned_on_drop() {
        let limiter = StreamLimiter::new(2);
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let first = limiter.try_acquire(alice).expect("first");
        let _second = limiter.try_acquire(alice).expect("second");
        assert!(limiter.try_acquire(alice).is_none());
        assert!(limiter.try_acquire(bob).is_some());
        drop(first);
        assert!(limiter.try_acquire(alice).is_some());
    }
}
