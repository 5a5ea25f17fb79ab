# `nix develop` (default) and `nix develop .#cuda`. Owns what a developer's shell holds; must
# never build cairn itself (the shells hold tools, the packages hold binaries).
{
  pkgs,
  toolchain,
  packages,
}:
let
  inherit (pkgs) lib;
  inherit (toolchain) craneLib;

  # Everything `cargo xtask test` runs, so the suite passes inside the shell as it does in CI:
  # one nixpkgs package per entry of DEBIAN_TOOLS and CARGO_TOOLS in xtask/src/test.rs (its test
  # `the_dev_shell_provides_every_system_tool` checks that each is named here). s3s-fs is not in
  # nixpkgs: `cargo xtask test` installs it with cargo inside the shell. What needs a Docker
  # engine or root (docker load/run, runc, mount namespaces) skips outside CI, saying why.
  testTools = [
    pkgs.cargo-nextest
    pkgs.nginx
    pkgs.wrk
    pkgs.nix # nix-instantiate, used with the dummy:// store only
    pkgs.patchelf
    pkgs.util-linux # unshare
    pkgs.iproute2
    (lib.getBin pkgs.openssl)
    pkgs.docker-compose
    pkgs.iptables # the servers test's DOCKER-USER rule
    pkgs.distribution # the registry (`registry serve CONFIG`)
    pkgs.skopeo
    pkgs.umoci
    pkgs.apacheHttpd # htpasswd
    pkgs.runc
    pkgs.docker-client
    pkgs.python3Packages.pip # pip3
    pkgs.git
    pkgs.chromium # the web app's browser test
    pkgs.chromedriver
    pkgs.postgresql # initdb, postgres, psql, pg_isready on PATH
    pkgs.hyperfine
    pkgs.deadnix
  ];

  default = craneLib.devShell {
    packages = [
      toolchain.rust-analyzer
    ]
    ++ testTools;
  };

  cuda =
    let
      inherit (packages.binaries) inference-cuda;
      cudaLibraries = inference-cuda.runtimeLibraries;
    in
    craneLib.devShell {
      inputsFrom = [ default ];
      packages = [ inference-cuda.nvcc ] ++ cudaLibraries;
      CUDA_COMPUTE_CAP = inference-cuda.computeCap;
      CUDA_ROOT = "${inference-cuda.toolkit}";
      CUDA_PATH = "${inference-cuda.toolkit}";
      shellHook = ''
        # The host driver's libcuda.so.1. NixOS keeps it in /run/opengl-driver/lib. Elsewhere it
        # sits in the distribution's library directory, which Nix's glibc never searches (it
        # ignores /etc/ld.so.cache) and which must not go on LD_LIBRARY_PATH whole (its libc
        # would shadow Nix's): link just the driver's libraries into a private directory.
        driver_dir=""
        if [ -e /run/opengl-driver/lib/libcuda.so.1 ]; then
          driver_dir=/run/opengl-driver/lib
        else
          for dir in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib/wsl/lib; do
            if [ -e "$dir/libcuda.so.1" ]; then
              driver_dir="''${XDG_RUNTIME_DIR:-/tmp}/cairn-cuda-driver-$(id -u)"
              mkdir -p "$driver_dir"
              ln -sf "$dir"/libcuda.so* "$dir"/libnvidia-*.so* "$driver_dir"/ 2>/dev/null || true
              break
            fi
          done
        fi
        export LD_LIBRARY_PATH="${lib.makeLibraryPath cudaLibraries}''${driver_dir:+:$driver_dir}''${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        if [ -z "$driver_dir" ]; then
          echo "cairn cuda shell: no libcuda.so.1 found; add the NVIDIA driver's directory to LD_LIBRARY_PATH" >&2
        fi
      '';
    };
in
{
  inherit default cuda;
}
