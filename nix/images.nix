# `images.<name>`: OCI image layouts written by cairn's own assembler (the store-built xtask) from
# a package's store closure, so Nix images follow the same layer and metadata rules as
# `cargo xtask image`. Owns how a closure becomes the assembler's input; must never lay out an
# image itself (no dockerTools, no tar here).
#
# The assembler's command line is data, nix/image-command.json, shared with the Rust test that
# runs the very same command on a store-like closure directory it builds (xtask/tests/flake.rs).
{
  pkgs,
  packages,
  imageCommand,
}:
let
  inherit (pkgs) lib;
  inherit (packages.binaries) xtask;

  command = builtins.fromJSON (builtins.readFile imageCommand);

  # "@name@" placeholders become shell variables of the build script below. The literal parts
  # are checked so that the double quotes around each argument are all the quoting it needs.
  toShellWord =
    arg:
    assert lib.assertMsg (builtins.match "[A-Za-z0-9@._/=-]*" arg != null)
      "nix/image-command.json: argument `${arg}` has characters that need shell quoting";
    ''"${builtins.replaceStrings (map (v: "@${v}@") command.placeholders) (map (v: "\${${v}}") command.placeholders) arg}"'';
  toShellWords = args: lib.concatMapStringsSep " " toShellWord args;

  # Copies store paths into DIR/nix/store/… (a closure directory as the assembler reads it),
  # leaving out the package itself and, for CUDA images, the CUDA runtime libraries.
  copyClosure = ''
    copy_closure() {
      local paths="$1" dir="$2" skip="$3"
      mkdir -p "$dir/nix/store"
      while read -r path; do
        case " $skip " in *" $path "*) continue ;; esac
        cp -a "$path" "$dir/nix/store/"
      done < "$paths"
    }
  '';

  mkImage =
    {
      name,
      package,
      binaryName ? name,
      cudaLibraries ? [ ],
    }:
    pkgs.runCommand "cairn-image-${name}"
      {
        nativeBuildInputs = [ xtask ];
        closurePaths = "${pkgs.closureInfo { rootPaths = [ package ]; }}/store-paths";
        skipPaths = lib.concatStringsSep " " ([ "${package}" ] ++ map (p: "${lib.getLib p}") cudaLibraries);
        cudaLibDirs = lib.concatMapStringsSep " " (p: "${lib.getLib p}/lib") cudaLibraries;
        imageName = name;
        binaryPath = "${package}/bin/${binaryName}";
        SOURCE_DATE_EPOCH = "1";
      }
      ''
        ${copyClosure}
        name="$imageName"
        binary="$binaryPath"
        closure="$PWD/closure"
        cuda="$PWD/cuda"
        copy_closure "$closurePaths" "$closure" "$skipPaths"
        mkdir -p "$cuda"
        for dir in $cudaLibDirs; do
          # Runtime libraries only: the libcuda stub (lib/stubs) is never packed.
          find "$dir" -maxdepth 1 -name '*.so*' -exec cp -L {} "$cuda/" \;
        done
        xtask ${toShellWords command.argv} ${lib.optionalString (cudaLibraries != [ ]) (toShellWords command.cudaArgv)}
      '';

  inherit (packages) binaries;
in
{
  gateway = mkImage {
    name = "gateway";
    package = binaries.gateway;
  };
  api = mkImage {
    name = "api";
    package = binaries.api;
  };
  inference = mkImage {
    name = "inference";
    package = binaries.inference;
  };
  inference-cuda = mkImage {
    name = "inference-cuda";
    package = binaries.inference-cuda;
    binaryName = "inference";
    cudaLibraries = binaries.inference-cuda.runtimeLibraries;
  };
}
