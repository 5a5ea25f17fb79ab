//! The plumbing the three services share, and nothing else: how a service logs
//! ([`telemetry`]), how it learns to stop ([`shutdown`]) and how an image without
//! curl asks a running service whether it is healthy ([`healthcheck`]).
//!
//! Routing, configuration and domain logic belong to each service; this crate must never
//! grow a dependency on one of them.

pub mod healthcheck;
pub mod shutdown;
pub mod telemetry;
