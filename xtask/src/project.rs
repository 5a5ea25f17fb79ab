//! Where the workspace is. Every stage resolves its paths from here, never from the current
//! directory, so `cargo xtask` behaves the same from any folder of the checkout.

use std::path::PathBuf;

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}
