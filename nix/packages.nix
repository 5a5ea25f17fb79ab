# The workspace's binaries, built with crane on one shared dependency build, plus the rendered
# nginx config. Owns the source filter, the targets each binary is built for and the CUDA build;
# must never know how images are laid out or how the dev stack runs them.
#
# - gateway, api, xtask, and the helpers of the images of packages (pg-entrypoint, PostgreSQL's
#   entrypoint; http-probe, nginx's health check): static musl binaries (no ELF closure to pack).
# - inference: glibc (candle's CPU kernels and the CUDA build share one libc).
# - inference-cuda: glibc + cudaPackages, CUDA_COMPUTE_CAP configurable through
#   `inference-cuda-for { computeCap = "86"; }`; its RUNPATH names the toolchain's runtime
#   libraries (glibc, gcc's libstdc++/libgcc_s), a directory of links to the CUDA runtime
#   libraries (never a libcuda) and the host driver directory, so the toolkit stays out of its
#   closure and the libcuda stub can never be loaded in place of the driver.
# - cuda-launch: glibc (it dlopens libcuda.so.1, which a static musl binary cannot), the
#   inference-cuda image's entrypoint; its RUNPATH gains the host driver directory
#   inference-cuda's has, so it looks for libcuda.so.1 where the CUDA build will.
{
  pkgs,
  nixpkgs,
  toolchain,
  root,
  sourceFilter,
}:
let
  inherit (pkgs) lib;
  inherit (toolchain) craneLib muslTarget;

  # The files the builds see. The rule is data, nix/source-filter.json (Rust sources and
  # manifests, what the crates read at build time such as SQL migrations and include_str! assets,
  # and what xtask reads at run time), shared with xtask/tests/source_filter.rs, which runs
  # `cargo check --workspace` on exactly the files it keeps.
  rule = builtins.fromJSON (builtins.readFile sourceFilter);
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions (
      [
        (lib.fileset.fileFilter (
          file: lib.any file.hasExt rule.extensions || lib.elem file.name rule.names
        ) root)
      ]
      ++ map (dir: lib.fileset.maybeMissing (root + "/${dir}")) rule.directories
    );
  };

  version = (builtins.fromTOML (builtins.readFile (root + "/xtask/Cargo.toml"))).package.version;

  # The binaries built for the static target; the shared dependency build compiles exactly this
  # package set for that target, so their builds reuse it without recompiling a dependency.
  staticPackages = [
    "gateway"
    "api"
    "xtask"
    "pg-entrypoint"
    "http-probe"
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
      # The CUDA runtime libraries the binary and the image use, as one directory of links:
      # each library file of their lib directories (never lib/stubs, never a libcuda), relative
      # links (libcublas.so.13 -> libcublas.so.13.x) kept as they are, files linked by absolute
      # path. Whatever nixpkgs puts beside the runtime libraries (its cudart links the libcuda
      # stub into a lib directory), the stub is then on no RUNPATH and in no image: a RUNPATH
      # entry holding libcuda.so.1 would shadow the host driver.
      cudaRuntime = pkgs.runCommand "cairn-cuda-runtime-${cuda.cudaMajorMinorVersion}" { } ''
        mkdir -p "$out/lib"
        for dir in ${lib.concatMapStringsSep " " (p: "${lib.getLib p}/lib") runtimeLibraries}; do
          for entry in "$dir"/*.so*; do
            name="$(basename "$entry")"
            case "$name" in libcuda.so*) continue ;; esac
            if [ -L "$entry" ] && [ "$(readlink "$entry")" = "$(basename "$(readlink "$entry")")" ]; then
              cp -P "$entry" "$out/lib/$name"
            elif [ -f "$entry" ]; then
              ln -s "$(readlink -f "$entry")" "$out/lib/$name"
            fi
          done
        done
      '';
      # The toolchain's runtime libraries: glibc, and gcc's lib output (libstdc++, libgcc_s;
      # candle-kernels links stdc++). The link added their directories to the RUNPATH; the
      # rewrite below replaces the whole RUNPATH, so they are named again here.
      toolchainLibraries = [
        (lib.getLib pkgs.stdenv.cc.libc)
        (lib.getLib pkgs.stdenv.cc.cc)
      ];
      runpathDirs = map (p: "${p}/lib") toolchainLibraries ++ [
        "${cudaRuntime}/lib"
        # NixOS puts the host driver (libcuda.so.1) here; elsewhere LD_LIBRARY_PATH names it.
        "/run/opengl-driver/lib"
      ];
      runpath = lib.concatStringsSep ":" runpathDirs;
    in
    buildBinary {
      name = "inference";
      cargoExtraArgs = "--locked -p inference --features cuda";
      extra = cudaEnv // {
        pname = "inference-cuda";
        cargoArtifacts = cudaArtifacts;
        # The RUNPATH is rewritten whole (the link's names the toolkit and the libcuda stub),
        # then checked: every DT_NEEDED but the host driver's libcuda resolves in a RUNPATH
        # directory of the store, and no RUNPATH directory of the store holds a libcuda.
        postFixup = ''
          bin="$out/bin/inference"
          patchelf --set-rpath ${runpath} "$bin"
          store_dirs="${lib.concatStringsSep " " (lib.filter (lib.hasPrefix builtins.storeDir) runpathDirs)}"
          for dir in $store_dirs; do
            if ls "$dir"/libcuda.so* >/dev/null 2>&1; then
              echo "inference-cuda: RUNPATH directory $dir holds a libcuda (it would shadow the host driver)" >&2
              exit 1
            fi
          done
          for needed in $(patchelf --print-needed "$bin"); do
            case "$needed" in libcuda.so*) continue ;; esac
            found=""
            for dir in $store_dirs; do
              if [ -e "$dir/$needed" ]; then found="$dir"; break; fi
            done
            if [ -z "$found" ]; then
              echo "inference-cuda: $needed (DT_NEEDED) is in no RUNPATH directory: ${runpath}" >&2
              exit 1
            fi
          done
        '';
        disallowedReferences = [
          toolkit
          cuda.cuda_nvcc
        ]
        ++ lib.optional (cuda.cuda_cudart ? stubs) cuda.cuda_cudart.stubs;
        passthru = {
          inherit
            runtimeLibraries
            cudaRuntime
            computeCap
            toolkit
            ;
          nvcc = cuda.cuda_nvcc;
        };
      };
    };

  binaries = {
    gateway = staticBinary "gateway";
    api = staticBinary "api";
    xtask = staticBinary "xtask";
    pg-entrypoint = staticBinary "pg-entrypoint";
    http-probe = staticBinary "http-probe";
    inference = buildBinary {
      name = "inference";
      cargoExtraArgs = "--locked -p inference";
    };
    inference-cuda = inference-cuda-for { };
    cuda-launch = buildBinary {
      name = "cuda-launch";
      cargoExtraArgs = "--locked -p cuda-launch";
      extra.postFixup = ''
        patchelf --add-rpath /run/opengl-driver/lib "$out/bin/cuda-launch"
      '';
    };
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
  inherit version;
  # `nix fmt`: treefmt configured for nixfmt, formatting every .nix file of the tree (plain
  # `nixfmt` reads stdin when given no file since Nix 2.25).
  formatter = pkgs.nixfmt-tree;
}
