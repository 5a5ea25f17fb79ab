# The workspace's binaries, built with crane on one shared dependency build, plus the rendered
# nginx config. Owns the source filter, the targets each binary is built for and the CUDA build;
# must never know how images are laid out or how the dev stack runs them.
#
# - gateway, api, xtask: static musl binaries (no ELF closure to pack).
# - inference: glibc (candle's CPU kernels and the CUDA build share one libc).
# - inference-cuda: glibc + cudaPackages, CUDA_COMPUTE_CAP configurable through
#   `inference-cuda-for { computeCap = "86"; }`; its RUNPATH names only the CUDA runtime libraries
#   and the host driver directory, so the toolkit and the libcuda stub stay out of its closure.
{
  pkgs,
  nixpkgs,
  toolchain,
  root,
}:
let
  inherit (pkgs) lib;
  inherit (toolchain) craneLib muslTarget;

  # Rust sources plus what the crates read at build time (SQL migrations, include_str! assets)
  # and what xtask reads at run time (topology, nginx pieces, the flake itself for its tests).
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (craneLib.fileset.commonCargoSources root)
      (lib.fileset.fileFilter (
        file:
        lib.any file.hasExt [
          "sql"
          "json"
          "conf"
          "nix"
          "lock"
          "html"
          "txt"
        ]
      ) root)
      (lib.fileset.maybeMissing (root + "/deploy"))
      (lib.fileset.maybeMissing (root + "/nginx"))
    ];
  };

  version = (builtins.fromTOML (builtins.readFile (root + "/xtask/Cargo.toml"))).package.version;

  # The binaries built for the static target; the shared dependency build compiles exactly this
  # package set for that target, so their builds reuse it without recompiling a dependency.
  staticPackages = [
    "gateway"
    "api"
    "xtask"
  ];
  packageArgs = names: lib.concatMapStringsSep " " (name: "-p ${name}") names;

  common = toolchain.muslEnv // {
    inherit src version;
    pname = "cairn";
    strictDeps = true;
    # SOURCE_DATE_EPOCH stays nixpkgs' fixed default here: the commit time would change the
    # dependency build's inputs on every commit and defeat its cache. Images use the commit time.
  };

  # ONE dependency build for the workspace: clippy/test/check artefacts and the glibc release
  # build of every crate, and the static release build of the musl binaries.
  cargoArtifacts = craneLib.buildDepsOnly (
    common
    // {
      pname = "cairn-workspace";
      buildPhaseCargoCommand = ''
        cargoWithProfile check --locked --workspace --all-targets
        cargoWithProfile build --locked --workspace
        cargoWithProfile build --locked --target ${muslTarget} ${packageArgs staticPackages}
      '';
      checkPhaseCargoCommand = ''
        cargoWithProfile test --locked --workspace --no-run
      '';
    }
  );

  buildBinary =
    {
      name,
      cargoExtraArgs,
      extra ? { },
    }:
    craneLib.buildPackage (
      common
      // {
        inherit cargoArtifacts cargoExtraArgs;
        pname = name;
        doCheck = false; # the `tests` check runs the suite once for the workspace
        meta.mainProgram = name;
      }
      // extra
    );

  # The static set is compiled once, exactly as the dependency build compiled its dependencies;
  # each package then holds one binary and, being static, may reference nothing in the store.
  staticSet = buildBinary {
    name = "cairn-static";
    cargoExtraArgs = "--locked --target ${muslTarget} ${packageArgs staticPackages}";
  };
  staticBinary =
    name:
    pkgs.runCommand "${name}-${version}"
      {
        inherit version;
        allowedReferences = [ ];
        meta.mainProgram = name;
      }
      ''
        install -Dm755 ${staticSet}/bin/${name} "$out/bin/${name}"
      '';

  # A nixpkgs instance that may build CUDA (unfree, not on cache.nixos.org).
  cudaPkgs =
    computeCap:
    import nixpkgs {
      inherit (pkgs.stdenv.hostPlatform) system;
      config = {
        cudaSupport = true;
        cudaCapabilities = [ (dottedCapability computeCap) ];
        allowUnfreePredicate =
          p:
          let
            name = lib.getName p;
          in
          lib.hasPrefix "cuda" name || lib.hasPrefix "libcu" name || lib.hasPrefix "libnv" name;
      };
    };
  # "86" -> "8.6", the form nixpkgs' cudaCapabilities uses.
  dottedCapability =
    cap: "${builtins.substring 0 (builtins.stringLength cap - 1) cap}.${lib.last (lib.stringToCharacters cap)}";

  inference-cuda-for =
    {
      computeCap ? "80",
    }:
    let
      cuda = (cudaPkgs computeCap).cudaPackages;
      # The libraries the binary loads at run time: they go in the image's CUDA layers.
      runtimeLibraries = [
        cuda.cuda_cudart
        cuda.libcublas
        cuda.libcurand
        cuda.cuda_nvrtc
      ];
      # Headers, nvcc and link-time libraries for the build only.
      toolkit = pkgs.symlinkJoin {
        name = "cuda-toolkit-${cuda.cudaMajorMinorVersion}";
        paths = [
          cuda.cuda_nvcc
          cuda.cuda_cccl
        ]
        ++ lib.concatMap (p: [
          (lib.getDev p)
          (lib.getLib p)
        ]) runtimeLibraries;
      };
      cudaEnv = {
        CUDA_COMPUTE_CAP = computeCap; # no nvidia-smi in the sandbox
        CUDA_ROOT = "${toolkit}";
        CUDA_PATH = "${toolkit}";
        nativeBuildInputs = [
          cuda.cuda_nvcc
          pkgs.patchelf
        ];
        buildInputs = runtimeLibraries;
      };
      cudaArtifacts = craneLib.buildDepsOnly (
        common
        // cudaEnv
        // {
          pname = "cairn-inference-cuda";
          cargoExtraArgs = "--locked -p inference --features cuda";
          doCheck = false;
        }
      );
      runpath = lib.concatStringsSep ":" (
        map (p: "${lib.getLib p}/lib") runtimeLibraries
        ++ [
          # NixOS puts the host driver (libcuda.so.1) here; elsewhere LD_LIBRARY_PATH names it.
          "/run/opengl-driver/lib"
        ]
      );
    in
    buildBinary {
      name = "inference";
      cargoExtraArgs = "--locked -p inference --features cuda";
      extra = cudaEnv // {
        pname = "inference-cuda";
        cargoArtifacts = cudaArtifacts;
        postFixup = ''
          patchelf --set-rpath ${runpath} "$out/bin/inference"
          if patchelf --print-rpath "$out/bin/inference" | grep -q stubs; then
            echo "inference-cuda: RUNPATH still names the libcuda stub" >&2
            exit 1
          fi
        '';
        disallowedReferences = [
          toolkit
          cuda.cuda_nvcc
        ];
        passthru = {
          inherit runtimeLibraries computeCap toolkit;
          nvcc = cuda.cuda_nvcc;
        };
      };
    };

  binaries = {
    gateway = staticBinary "gateway";
    api = staticBinary "api";
    xtask = staticBinary "xtask";
    inference = buildBinary {
      name = "inference";
      cargoExtraArgs = "--locked -p inference";
    };
    inference-cuda = inference-cuda-for { };
  };

  # The nginx config `cargo xtask render` writes from deploy/, rendered by the store-built xtask.
  nginx-config =
    pkgs.runCommand "cairn-nginx-config"
      {
        nativeBuildInputs = [ binaries.xtask ];
        CAIRN_ROOT = src;
      }
      ''
        xtask render --out "$out"
      '';
in
{
  inherit
    src
    cargoArtifacts
    binaries
    inference-cuda-for
    nginx-config
    ;
  formatter = pkgs.nixfmt;
}
