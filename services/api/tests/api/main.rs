//! The api's integration tests: the real `api` binary against a real PostgreSQL, real object
//! storage (a local directory and the s3s-fs S3 server) and an OpenAI-compatible streaming
//! endpoint, all started by the test. One test binary, so the suite links once.

mod chat;
mod errors;
mod files;
mod hardening;
mod lifecycle;
mod support;
