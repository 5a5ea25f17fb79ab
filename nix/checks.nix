# `nix flake check`: clippy, rustfmt, the test suite and deadnix, all on the shared dependency
# build, plus every CPU package (a check builds it). Owns what CI through Nix proves; must
# never change how a package is built.
{
  pkgs,
  toolchain,
  packages,
}:
let
  inherit (pkgs) lib;
  inherit (toolchain) craneLib;
  inherit (packages) src cargoArtifacts version;

  common = toolchain.muslEnv // {
    inherit src cargoArtifacts version;
    pname = "cairn";
    strictDeps = true;
  };
in
{
  clippy = craneLib.cargoClippy (
    common
    // {
      cargoClippyExtraArgs = "--workspace --all-targets -- --deny warnings";
    }
  );

  # pname and version given: without them crane derives placeholders and warns.
  fmt = craneLib.cargoFmt {
    inherit src version;
    pname = "cairn";
  };

  # The same tests `cargo xtask test` runs. The sandbox has no network, no Docker and no root,
  # so tests needing those (runc, docker load, registries reached through the engine) skip with
  # their printed reason, as they do outside CI.
  tests = craneLib.cargoNextest (
    common
    // {
      cargoNextestExtraArgs = "--workspace --no-tests=pass";
      nativeCheckInputs = [
        pkgs.postgresql
        pkgs.nginx
        pkgs.skopeo
        pkgs.umoci
        pkgs.nix
        pkgs.deadnix
        pkgs.git
      ];
    }
  );

  deadnix = pkgs.runCommand "cairn-deadnix" { nativeBuildInputs = [ pkgs.deadnix ]; } ''
    deadnix --fail ${src}/flake.nix ${src}/nix
    touch "$out"
  '';
}
// lib.mapAttrs' (name: lib.nameValuePair "package-${name}") (
  lib.removeAttrs packages.binaries [ "inference-cuda" ] # unfree and not on any binary cache
)
