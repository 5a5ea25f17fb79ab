//! Where the workspace is. Every stage resolves its paths from here, never from the current
//! directory, so `cargo xtask` behaves the same from any folder of the checkout.

use std::path::PathBuf;

/// The workspace root: `CAIRN_ROOT` when set (a store-built xtask runs far from the directory
/// it was compiled in, e.g. inside a Nix derivation), else the parent of `xtask/`.
pub fn root() -> PathBuf {
    if let Some(root) = std::env::var_os("CAIRN_ROOT").filter(|root| !root.is_empty()) {
        return PathBuf::from(root);
    }
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}
