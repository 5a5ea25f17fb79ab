//! A headless Chromium driven over W3C WebDriver (Debian's `chromium` and `chromium-driver`).
//!
//! The client is the dozen WebDriver commands these tests use, as JSON over the blocking
//! `reqwest` client xtask already depends on: a WebDriver crate (fantoccini) would add an async
//! stack, hyper-rustls and a cookie jar to the build for the same few requests. Every command
//! panics with WebDriver's own error message, naming what was asked.

pub mod webdriver;
