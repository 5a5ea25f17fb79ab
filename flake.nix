{
  # cairn's flake: the same artefacts as `cargo xtask`, built hermetically. Each concern lives in
  # one file under nix/ (toolchain, packages, images, dev stack, shells, checks); this file only
  # declares the inputs and wires the files together per system.
  description = "cairn: reproducible builds, minimal OCI images and a local stack for an LLM web app";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    crane.url = "github:ipetkov/crane";
    fenix = {
      url = "github:nix-community/fenix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    process-compose-flake.url = "github:Platonic-Systems/process-compose-flake";
    services-flake.url = "github:juspay/services-flake";
  };

  outputs =
    {
      self,
      nixpkgs,
      crane,
      fenix,
      process-compose-flake,
      services-flake,
      ...
    }:
    let
      inherit (nixpkgs) lib;

      # What `cargo xtask build|image` reads from git, taken from the flake's source instead:
      # the commit time (the same default SOURCE_DATE_EPOCH as the cargo backend) and revision.
      provenance = {
        SOURCE_DATE_EPOCH = toString (self.lastModified or 0);
        CAIRN_REVISION = self.rev or self.dirtyRev or "dirty";
      };

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];

      perSystem =
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          toolchain = import ./nix/toolchain.nix {
            inherit pkgs crane;
            fenix = fenix.packages.${system};
            toolchainFile = ./rust-toolchain.toml;
          };
          packages = import ./nix/packages.nix {
            inherit pkgs nixpkgs toolchain;
            root = ./.;
            sourceFilter = ./nix/source-filter.json;
          };
          images = import ./nix/images.nix {
            inherit pkgs packages provenance;
            imageCommand = ./nix/image-command.json;
            # The nginx image's site (the catalog packs the workspace's web/).
            site = ./web;
          };
          dev = import ./nix/dev.nix {
            inherit pkgs packages;
            processCompose = import process-compose-flake.lib { inherit pkgs; };
            servicesModule = services-flake.processComposeModules.default;
          };
          shells = import ./nix/shells.nix { inherit pkgs toolchain packages; };
          checks = import ./nix/checks.nix { inherit pkgs toolchain packages; };
        in
        {
          inherit
            packages
            images
            dev
            shells
            checks
            ;
        };

      bySystem = lib.genAttrs systems perSystem;
      forEachSystem = f: lib.mapAttrs (_: f) bySystem;
    in
    {
      packages = forEachSystem (
        s:
        s.packages.binaries
        // lib.mapAttrs' (name: image: lib.nameValuePair "image-${name}" image) s.images
        // {
          inherit (s.packages) nginx-config;
          default = s.packages.binaries.gateway;
        }
      );

      # `nix build .#images.gateway` and `.#inference-cuda-for` resolve here: legacyPackages may
      # nest, packages may not.
      legacyPackages = forEachSystem (s: {
        inherit (s) images;
        inherit (s.packages) inference-cuda-for;
      });

      apps = forEachSystem (s: {
        dev = {
          type = "app";
          program = lib.getExe s.dev;
          meta.description = "The full local stack: PostgreSQL, S3, inference, api, gateway, nginx";
        };
      });

      devShells = forEachSystem (s: s.shells);
      checks = forEachSystem (s: s.checks);
      formatter = forEachSystem (s: s.packages.formatter);
    };
}
