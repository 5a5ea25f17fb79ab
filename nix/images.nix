# `images.<name>`: OCI image layouts written by cairn's own assembler (the store-built xtask) from
# a package's store closure, so Nix images follow the same layer and metadata rules as
# `cargo xtask image`. Owns how a package becomes the assembler's input; must never lay out an
# image itself (no dockerTools, no tar here), nor restate an image's metadata.
#
# Inside the build sandbox the package's runtime closure is exactly what /nix/store holds, and the
# assembler reads each executable's ELF closure (interpreter, DT_NEEDED, RUNPATH) from there: the
# libraries are packed at their store paths, so RUNPATH and the interpreter resolve unchanged.
# CUDA runtime libraries are handed over as one directory and get their own layers; extra files
# (mime.types) as `--file` arguments, whole store paths as `--tree`s.
#
# cairn's services (gateway, api, inference, inference-cuda) and the other servers' programs from
# nixpkgs (nginx, PostgreSQL, Garage) go through the same mkImage. Every image is named after its
# entry of the assembler's catalog (xtask/src/image/catalog.rs), which alone says its entrypoint,
# cmd, stop signal, env, writable directories (owned by the non-root user), ports, helper binary
# (pg-entrypoint, http-probe: built here as static binaries) and nginx's site: what the cargo
# backend takes from Debian packages, this file hands over as `--program`s of the store closure.
# Only what differs because the files come from the store is said here (postgres's PATH).
#
# The assembler's command line is data, nix/image-command.json, shared with the Rust test that
# runs the very same command on a store-like closure it mounts at /nix/store
# (xtask/tests/nix_image.rs).
{
  pkgs,
  packages,
  imageCommand,
  provenance,
  site,
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

  # One image: `binaryPath` is the executable at /usr/local/bin (its ELF closure is read from the
  # sandbox's /nix/store), `programs` executables of the closure at their image paths
  # (`{ source; target; }`, ELF closures packed too), `files` extra files (`{ source; target; }`,
  # a store file and its absolute path in the image), `trees` directories whose every file goes
  # in at the same relative path (`{ source; target; }`; listed by the assembler), `closureOf`
  # packages whose whole runtime closure goes in at its store paths (data files, modules
  # loaded at run time), `env` variables set over the catalog's, `withSite` the workspace's web/
  # as the catalog's nginx site, `cudaDir` a directory of CUDA runtime libraries,
  # `launcherPath` an entrypoint packed at /usr/local/bin/NAME in the binary's place (the binary
  # then at /usr/local/libexec/cairn/NAME; inference-cuda's cuda-launch).
  mkImage =
    {
      name,
      binaryPath,
      version,
      programs ? [ ],
      files ? [ ],
      trees ? [ ],
      closureOf ? [ ],
      env ? { },
      withSite ? false,
      cudaDir ? null,
      launcherPath ? null,
    }:
    pkgs.runCommand "cairn-image-${name}"
      {
        nativeBuildInputs = [ xtask ];
        imageName = name;
        inherit binaryPath;
        cudaLibDir = if cudaDir == null then "" else cudaDir;
        extraPrograms = map (program: "${program.source}:${program.target}") programs;
        launcherFile = if launcherPath == null then "" else launcherPath;
        extraFiles = map (file: "${file.source}:${file.target}") files;
        extraTrees = map (tree: "${tree.source}:${tree.target}") trees;
        closureFile =
          if closureOf == [ ] then "" else "${pkgs.closureInfo { rootPaths = closureOf; }}/store-paths";
        # NAME=VALUE words: values hold no whitespace (store paths, PATH lists).
        envSettings = lib.mapAttrsToList (
          key: value:
          assert lib.assertMsg (builtins.match "[^[:space:]]*" value != null)
            "nix/images.nix: env ${key} of image ${name} holds whitespace";
          "${key}=${value}"
        ) env;
        siteDir = if withSite then "${site}" else "";
        caBundleFile = "${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt";
        inherit (provenance) SOURCE_DATE_EPOCH CAIRN_REVISION;
        CAIRN_VERSION = version;
      }
      ''
        name="$imageName"
        binary="$binaryPath"
        launcher="$launcherFile"
        caBundle="$caBundleFile"
        cache="$PWD/cache"
        cuda="$PWD/cuda"
        fileArgs=()
        for file in $extraFiles; do
          fileArgs+=(${toShellWords command.fileArgv})
        done
        for program in $extraPrograms; do
          fileArgs+=(${toShellWords command.programArgv})
        done
        for env in $envSettings; do
          fileArgs+=(${toShellWords command.envArgv})
        done
        if [ -n "$closureFile" ]; then
          while IFS= read -r path; do
            extraTrees="$extraTrees $path:$path"
          done < "$closureFile"
        fi
        for tree in $extraTrees; do
          fileArgs+=(${toShellWords command.treeArgv})
        done
        if [ -n "$siteDir" ]; then
          # The catalog's nginx files are read from the workspace root: web/ is the site.
          export CAIRN_ROOT="$PWD/root"
          mkdir -p "$CAIRN_ROOT"
          cp -r --no-preserve=mode "$siteDir" "$CAIRN_ROOT/web"
        fi
        if [ -n "$cudaLibDir" ]; then
          # The runtime libraries only (the directory holds no libcuda, see nix/packages.nix).
          # Relative symlinks stay symlinks (one copy of each library); an absolute one is
          # replaced by the file it names.
          mkdir -p "$cuda"
          cp -P "$cudaLibDir"/*.so* "$cuda/"
          find "$cuda" -lname '/*' -exec sh -c 'cp --remove-destination "$(readlink -f "$1")" "$1"' _ {} \;
        fi
        xtask ${toShellWords command.argv} ${
          lib.optionalString (cudaDir != null) (toShellWords command.cudaArgv)
        } ${
          lib.optionalString (launcherPath != null) (toShellWords command.launcherArgv)
        } "''${fileArgs[@]}"
      '';

  inherit (packages) binaries;
  cairnImage =
    name: package:
    mkImage {
      inherit name;
      binaryPath = lib.getExe package;
      version = package.version or "0.0.0";
    };

  # The other servers' programs from nixpkgs, each in the image of its catalog entry. PostgreSQL
  # is the major version of the cargo backend's Debian packages (deploy/debian.lock), so a data
  # volume works with either image; Garage the major version the servers run (2.x). Their
  # configs are the deployment's (mounted from the bundle) or the catalog's (nginx's standalone
  # config), never written here.
  postgresql = pkgs.postgresql_15;
  garage = pkgs.garage_2;
  postgresPrograms = [
    "postgres"
    "initdb"
    "pg_isready"
    "psql"
  ];
in
{
  gateway = cairnImage "gateway" binaries.gateway;
  api = cairnImage "api" binaries.api;
  inference = cairnImage "inference" binaries.inference;
  inference-cuda = mkImage {
    name = "inference-cuda";
    binaryPath = lib.getExe binaries.inference-cuda;
    inherit (binaries.inference-cuda) version;
    cudaDir = "${binaries.inference-cuda.cudaRuntime}/lib";
    # Without the NVIDIA driver, cairn's one line instead of the loader's (services/cuda-launch).
    launcherPath = lib.getExe binaries.cuda-launch;
  };

  # The catalog's entrypoint runs /usr/sbin/nginx with `-c /etc/nginx/nginx.conf`, the path the
  # deployment mounts its config at (nixpkgs' nginx would otherwise read its store path's
  # conf/). http-probe is the health check; the site and standalone config are the catalog's.
  nginx = mkImage {
    name = "nginx";
    binaryPath = lib.getExe binaries.http-probe;
    inherit (pkgs.nginx) version;
    programs = [
      {
        source = "${pkgs.nginx}/bin/nginx";
        target = "/usr/sbin/nginx";
      }
    ];
    files = [
      {
        source = "${pkgs.nginx}/conf/mime.types";
        target = "/etc/nginx/mime.types";
      }
    ];
    withSite = true;
  };

  # The catalog's Prebuilt entry: /usr/local/bin/garage, cmd `server`, /var/lib/garage/{data,meta}
  # owned by the non-root user.
  garage = mkImage {
    name = "garage";
    binaryPath = lib.getExe garage;
    inherit (garage) version;
  };

  # pg-entrypoint (the catalog's entrypoint) finds initdb, postgres and pg_isready on PATH: the
  # Debian image's PATH names /usr/lib/postgresql/15/bin, this one the package's store bin/.
  # postgres finds its share/ and lib/ (timezones, modules it dlopens) relative to its own store
  # path, and the package's runtime closure (tzdata, ICU data…) by store path: the whole closure
  # goes in at its store paths, the programs executable.
  postgres = mkImage {
    name = "postgres";
    binaryPath = lib.getExe binaries.pg-entrypoint;
    inherit (postgresql) version;
    programs = map (program: {
      source = "${postgresql}/bin/${program}";
      target = "${postgresql}/bin/${program}";
    }) postgresPrograms;
    closureOf = [
      postgresql
      (lib.getLib postgresql)
    ];
    env.PATH = "/usr/local/bin:${postgresql}/bin:/usr/bin:/bin";
  };
}
