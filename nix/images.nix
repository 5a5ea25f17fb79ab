# `images.<name>`: OCI image layouts written by cairn's own assembler (the store-built xtask) from
# a package's store closure, so Nix images follow the same layer and metadata rules as
# `cargo xtask image`. Owns how a package becomes the assembler's input; must never lay out an
# image itself (no dockerTools, no tar here).
#
# Inside the build sandbox the package's runtime closure is exactly what /nix/store holds, and the
# assembler reads the binary's ELF closure (interpreter, DT_NEEDED, RUNPATH) from there: the
# libraries are packed at their store paths, so RUNPATH and the interpreter resolve unchanged.
# CUDA runtime libraries are handed over as one directory and get their own layers; extra files
# (configs, a placeholder page, postgres's share/ and lib/ trees) as `--file` arguments.
#
# cairn's services (gateway, api, inference, inference-cuda) and the other servers' programs from
# nixpkgs (nginx, PostgreSQL, Garage) go through the same mkImage.
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

  # One image: `binaryPath` is the executable (its ELF closure is read from the sandbox's
  # /nix/store), `files` extra files (`{ source; target; }`, a store file and its absolute path in
  # the image), `trees` directories whose every file goes in at the same relative path
  # (`{ source; target; }`; found at build time), `cudaDir` a directory of CUDA runtime libraries,
  # `launcherPath` an entrypoint packed at /usr/local/bin/NAME in the binary's place (the binary
  # then at /usr/local/libexec/cairn/NAME; inference-cuda's cuda-launch).
  mkImage =
    {
      name,
      binaryPath,
      version,
      files ? [ ],
      trees ? [ ],
      cudaDir ? null,
      launcherPath ? null,
    }:
    pkgs.runCommand "cairn-image-${name}"
      {
        nativeBuildInputs = [ xtask ];
        imageName = name;
        inherit binaryPath;
        cudaLibDir = if cudaDir == null then "" else cudaDir;
        launcherFile = if launcherPath == null then "" else launcherPath;
        extraFiles = map (file: "${file.source}:${file.target}") files;
        extraTrees = map (tree: "${tree.source}:${tree.target}") trees;
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
        for tree in $extraTrees; do
          source="''${tree%%:*}"
          target="''${tree#*:}"
          while IFS= read -r -d "" found; do
            file="$found:$target''${found#"$source"}"
            fileArgs+=(${toShellWords command.fileArgv})
          done < <(find "$source" -type f -print0 | sort -z)
        done
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

  # The other servers' images, from nixpkgs' packages through the same assembler. Their configs
  # are written for the image (non-root, unprivileged ports, state under /var/lib or
  # /var/cache), as the cargo backend's images from Debian packages are.
  nginxConf = pkgs.writeText "cairn-image-nginx.conf" ''
    worker_processes auto;
    pid /tmp/nginx.pid;
    error_log stderr;
    events {}
    http {
      include /etc/nginx/mime.types;
      access_log off;
      # On the container's disk, not a memory-backed tmpfs.
      client_body_temp_path /var/cache/nginx/body;
      proxy_temp_path /var/cache/nginx/proxy;
      fastcgi_temp_path /var/cache/nginx/fastcgi;
      scgi_temp_path /var/cache/nginx/scgi;
      uwsgi_temp_path /var/cache/nginx/uwsgi;
      # The deployment's own config (rendered into the bundle) is mounted here.
      include /etc/nginx/conf.d/*.conf;
      server {
        listen 8080 default_server;
        root /usr/share/nginx/html;
      }
    }
  '';
  placeholderPage = pkgs.writeText "cairn-placeholder.html" ''
    <!doctype html>
    <html lang="en"><head><meta charset="utf-8"><title>cairn</title></head>
    <body><p>cairn's web app is not part of this image yet.</p></body></html>
  '';
  # Garage 2.x, the major version the servers run; secrets come from the environment
  # (GARAGE_RPC_SECRET, GARAGE_ADMIN_TOKEN) or the *_file settings, never from the image.
  garage = pkgs.garage_2;
  garageConf = pkgs.writeText "cairn-image-garage.toml" ''
    metadata_dir = "/var/lib/garage/meta"
    data_dir = "/var/lib/garage/data"
    db_engine = "lmdb"
    replication_factor = 1
    rpc_bind_addr = "[::]:3901"

    [s3_api]
    s3_region = "garage"
    api_bind_addr = "[::]:3900"

    [admin]
    api_bind_addr = "[::]:3903"
  '';
  postgresql = pkgs.postgresql;
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

  nginx = mkImage {
    name = "nginx";
    binaryPath = "${pkgs.nginx}/bin/nginx";
    inherit (pkgs.nginx) version;
    files = [
      {
        source = "${pkgs.nginx}/conf/mime.types";
        target = "/etc/nginx/mime.types";
      }
      {
        source = nginxConf;
        target = "/etc/nginx/nginx.conf";
      }
      {
        source = placeholderPage;
        target = "/usr/share/nginx/html/index.html";
      }
    ];
  };

  garage = mkImage {
    name = "garage";
    binaryPath = lib.getExe garage;
    inherit (garage) version;
    files = [
      {
        source = garageConf;
        target = "/etc/garage.toml"; # garage's default config path
      }
    ];
  };

  # postgres finds its share/ and lib/ (timezones, dlopen'd modules) relative to its own store
  # path: both trees go in at their store paths, as in the package.
  postgres = mkImage {
    name = "postgres";
    binaryPath = "${postgresql}/bin/postgres";
    inherit (postgresql) version;
    trees = map (dir: {
      source = dir;
      target = dir;
    }) [
      "${postgresql}/share"
      "${lib.getLib postgresql}/lib"
    ];
  };
}
