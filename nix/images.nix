# `images.<name>`: OCI image layouts written by cairn's own assembler (the store-built xtask) from
# a package's store closure, so Nix images follow the same layer and metadata rules as
# `cargo xtask image`. Owns how a package becomes the assembler's input; must never lay out an
# image itself (no dockerTools, no tar here).
#
# Inside the build sandbox the package's runtime closure is exactly what /nix/store holds, and the
# assembler reads the binary's ELF closure (interpreter, DT_NEEDED, RUNPATH) from there: the
# libraries are packed at their store paths, so RUNPATH and the interpreter resolve unchanged.
# CUDA runtime libraries are handed over as one directory and get their own layers.
#
# The assembler's command line is data, nix/image-command.json, shared with the Rust test that
# runs the very same command on a store-like closure it mounts at /nix/store
# (xtask/tests/nix_image.rs).
{
  pkgs,
  packages,
  imageCommand,
  provenance,
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
        cudaLibDirs = lib.concatMapStringsSep " " (p: "${lib.getLib p}/lib") cudaLibraries;
        imageName = name;
        binaryPath = "${package}/bin/${binaryName}";
        caBundleFile = "${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt";
        inherit (provenance) SOURCE_DATE_EPOCH CAIRN_REVISION;
        CAIRN_VERSION = package.version or "0.0.0";
      }
      ''
        name="$imageName"
        binary="$binaryPath"
        caBundle="$caBundleFile"
        cache="$PWD/cache"
        cuda="$PWD/cuda"
        mkdir -p "$cuda"
        for dir in $cudaLibDirs; do
          # Runtime libraries only: the libcuda stub (lib/stubs) is never packed. Symlinks stay
          # symlinks (one copy of each library); one that leaves its store path is resolved.
          find "$dir" -maxdepth 1 -name '*.so*' -exec cp -P {} "$cuda/" \;
        done
        find "$cuda" -lname '/*' -exec sh -c 'cp --remove-destination "$(readlink -f "$1")" "$1"' _ {} \;
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
