# The Rust toolchain and the crane library built on it. Owns the toolchain version and the targets;
# must never know about cairn's packages.
#
# fenix's `stable` set is pinned by the fenix revision in flake.lock (Rust 1.95.0 at the locked
# revision). `fromToolchainFile` would need the channel manifest's sha256 (import from derivation),
# so instead the pin is checked: evaluation fails when rust-toolchain.toml and this file disagree.
{
  pkgs,
  crane,
  fenix,
  toolchainFile,
}:
let
  inherit (pkgs) lib;

  # The Rust version fenix's `stable` ships at the revision flake.lock pins. Bump it together with
  # `nix flake update fenix` and rust-toolchain.toml.
  fenixStableVersion = "1.95.0";
  pinnedChannel = (builtins.fromTOML (builtins.readFile toolchainFile)).toolchain.channel;

  # The static (musl) target of this system, e.g. x86_64-unknown-linux-musl.
  muslTarget = pkgs.pkgsStatic.stdenv.hostPlatform.rust.rustcTarget;
  # The glibc target of this system, e.g. x86_64-unknown-linux-gnu.
  gnuTarget = pkgs.stdenv.hostPlatform.rust.rustcTarget;

  rust =
    assert lib.assertMsg (pinnedChannel == fenixStableVersion) ''
      rust-toolchain.toml pins Rust ${pinnedChannel} but nix/toolchain.nix expects fenix's stable
      channel to be ${fenixStableVersion}; update both together (and `nix flake update fenix`).
    '';
    fenix.combine [
      fenix.stable.cargo
      fenix.stable.rustc
      fenix.stable.rustfmt
      fenix.stable.clippy
      fenix.stable.rust-src
      fenix.targets.${muslTarget}.stable.rust-std
    ];

  craneLib = (crane.mkLib pkgs).overrideToolchain (_: rust);

  # The C compiler and linker for the static target: ring and other C dependencies of the api
  # need a musl C compiler, and the final link must be static.
  muslCc = pkgs.pkgsStatic.stdenv.cc;
  envTarget = target: lib.toUpper (builtins.replaceStrings [ "-" ] [ "_" ] target);
  muslEnv = {
    "CARGO_TARGET_${envTarget muslTarget}_LINKER" = "${muslCc}/bin/${muslCc.targetPrefix}cc";
    "CARGO_TARGET_${envTarget muslTarget}_RUSTFLAGS" = "-C target-feature=+crt-static";
    "CC_${builtins.replaceStrings [ "-" ] [ "_" ] muslTarget}" =
      "${muslCc}/bin/${muslCc.targetPrefix}cc";
  };
in
{
  inherit
    rust
    craneLib
    muslTarget
    gnuTarget
    muslEnv
    ;
  version = fenixStableVersion;
  rust-analyzer = fenix.stable.rust-analyzer;
}
