//! Password hashing with Argon2id (PHC strings in the database). Each hash takes about 19 MiB
//! and tens of milliseconds of one core, so [`Hashing`] runs it on the blocking pool behind a
//! bounded number of slots: a caller that finds no free slot within a short wait gets a 503
//! with `Retry-After` instead of growing the queue (and the memory) without limit.
//!
//! A login for an email nobody registered verifies against [`DUMMY_HASH`], so it costs the
//! same as a wrong password and its timing does not tell which emails have accounts.

use std::sync::Arc;
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// A hash of no password, with the same algorithm and cost as [`hash`] produces.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$Y2Fpcm4tZHVtbXktc2FsdA$0UKZzv6QvWmyIZAdzCIm7gnXt6Dfw8N5Ll0wMMC8Bck";

/// Hashes `password` with a fresh random salt.
pub fn hash(password: &str) -> Result<String, ApiError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| ApiError::Internal(format!("hashing a password: {err}")))
}

/// True when `password` matches the stored PHC string.
pub fn verify(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// The bounded hashing service every handler shares.
#[derive(Debug, Clone)]
pub struct Hashing {
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl Hashing {
    /// At most `slots` hashes at once; a caller waits at most `wait` for one.
    pub fn new(slots: usize, wait: Duration) -> Hashing {
        Hashing {
            slots: Arc::new(Semaphore::new(slots)),
            wait,
        }
    }

    async fn slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(self.wait, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(closed)) => Err(ApiError::Internal(format!("hashing slots: {closed}"))),
            Err(_) => {
                metrics::counter!("api_password_hash_refusals_total").increment(1);
                Err(ApiError::Overloaded(
                    "too many sign-ins at once; try again shortly".into(),
                ))
            }
        }
    }

    /// [`hash`] in a slot, off the async threads.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let permit = self.slot().await?;
        // The permit goes with the work: a caller that gives up does not free the slot early.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash(&password)
        })
        .await
        .map_err(|err| ApiError::Internal(format!("hash task: {err}")))?
    }

    /// [`verify`] in a slot, off the async threads, against `stored` or, for a user who does
    /// not exist, against [`DUMMY_HASH`] (always false, same cost).
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        let permit = self.slot().await?;
        metrics::counter!("api_password_verifications_total").increment(1);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match stored {
                Some(stored) => verify(&password, &stored),
                None => {
                    verify(&password, DUMMY_HASH);
                    false
                }
            }
        })
        .await
        .map_err(|err| ApiError::Internal(format!("verify task: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_argon2id_and_verifies() {
        let stored = hash("correct horse").expect("hash");
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(verify("correct horse", &stored));
        assert!(!verify("wrong horse", &stored));
        assert!(!verify("correct horse", "not a phc string"));
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_does() {
        let real = hash("correct horse").expect("hash");
        let real = PasswordHash::new(&real).expect("parse");
        let dummy = PasswordHash::new(DUMMY_HASH).expect("the dummy parses, so verify runs");
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        assert_eq!(dummy.hash.map(|h| h.len()), real.hash.map(|h| h.len()));
    }

    #[tokio::test]
    async fn a_caller_beyond_the_bound_is_refused_after_the_wait() {
        let hashing = Hashing::new(1, Duration::from_millis(20));
        let held = hashing.slot().await.expect("the only slot");
        let refused = hashing.hash("correct horse".into()).await;
        assert!(
            matches!(refused, Err(ApiError::Overloaded(_))),
            "{refused:?}"
        );
        drop(held);
        let unknown = hashing.verify("any".into(), None).await.expect("a slot");
        assert!(!unknown);
    }
}
