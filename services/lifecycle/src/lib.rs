//! The plumbing the three services share, and nothing else: how a service logs
//! ([`telemetry`]), how it learns to stop ([`shutdown`]) and how an image without
//! curl asks a running service whether it is healthy ([`healthcheck`]), and how it refuses a
//! request body without the client seeing a reset instead of the answer ([`linger`]).
//!
//! Routing, configuration and domain logic belong to each service; this crate must never
//! grow a dependency on one of them.

pub mod healthcheck;
pub mod linger;
pub mod shutdown;
pub mod telemetry;
