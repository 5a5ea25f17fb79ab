//! The assembler command the flake's image derivations run (`nix/image-command.json`, read by
//! `nix/images.nix`), run here with the same arguments on a store-like closure built by the test:
//! a dynamically linked binary whose interpreter and RUNPATH point into `/nix/store/…-glibc`, as
//! every glibc binary Nix builds does. As inside a Nix build sandbox, that closure is what
//! `/nix/store` holds while the assembler runs (a bind mount in a private mount namespace; the
//! machine's own store is untouched). The layout must be one skopeo reads, and the binary must
//! start from the image's root filesystem.

mod image_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const STORE: &str = "/nix/store";
const GLIBC: &str = "0c7c0ip9h0qs4bd8xmp8m2nxlbzyp4ra-glibc-cairn-test";
const PACKAGE: &str = "1wh6m2mlpv2yd7k2aiz3jgbf5wxc0y6z-hello-cairn-test";
const IMAGE: &str = "hello";
const GREETING: &str = "hello-from-the-closure";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The host file a library name resolves to (the test's fixture only: cairn itself reads ELF).
fn host_library(name: &str) -> PathBuf {
    [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(name))
    .find(|path| path.exists())
    .unwrap_or_else(|| panic!("{name} not found on the host"))
    .canonicalize()
    .expect("canonical library path")
}

/// A store directory holding `…-glibc/lib` (interpreter, libc, a symlink) and `…-hello/bin/hello`
/// patched to load its interpreter and libc from that store path, like a Nix-built binary.
/// Returns the store directory and the binary's path as seen once it is mounted at /nix/store.
fn store_like_closure(dir: &Path, patchelf: &Path) -> (PathBuf, PathBuf) {
    let store = dir.join("store");
    let glibc_lib = store.join(GLIBC).join("lib");
    std::fs::create_dir_all(&glibc_lib).expect("create glibc dir");
    let interpreter = run(Command::new(patchelf).args(["--print-interpreter", "/bin/echo"]));
    let interpreter = Path::new(interpreter.trim());
    let interpreter_name = interpreter.file_name().expect("interpreter file name");
    std::fs::copy(
        interpreter.canonicalize().expect("interpreter"),
        glibc_lib.join(interpreter_name),
    )
    .expect("copy interpreter");
    for needed in run(Command::new(patchelf).args(["--print-needed", "/bin/echo"])).lines() {
        std::fs::copy(host_library(needed), glibc_lib.join(needed)).expect("copy library");
    }
    std::os::unix::fs::symlink("libc.so.6", glibc_lib.join("libc.so")).expect("symlink");

    let binary = store.join(PACKAGE).join("bin").join(IMAGE);
    std::fs::create_dir_all(binary.parent().expect("bin dir")).expect("create bin dir");
    std::fs::copy("/bin/echo", &binary).expect("copy /bin/echo");
    let mounted_glibc_lib = Path::new(STORE).join(GLIBC).join("lib");
    run(Command::new(patchelf)
        .arg("--set-interpreter")
        .arg(mounted_glibc_lib.join(interpreter_name))
        .arg("--set-rpath")
        .arg(&mounted_glibc_lib)
        .arg(&binary));
    (
        store,
        Path::new(STORE).join(PACKAGE).join("bin").join(IMAGE),
    )
}

/// nix/image-command.json's arguments with the placeholders filled in, as nix/images.nix does.
/// `files`, `trees` and `programs` are `HOST_PATH:/IMAGE/PATH` values, `env` `NAME=VALUE`
/// ones: `fileArgv`, `treeArgv`, `programArgv` and `envArgv` are repeated once for each.
struct Extras<'a> {
    files: &'a [String],
    trees: &'a [String],
    programs: &'a [String],
    env: &'a [String],
    /// inference-cuda's launcherArgv.
    launcher: bool,
}

fn assembler_arguments(
    values: &BTreeMap<&str, PathBuf>,
    with_cuda: bool,
    extras: &Extras,
) -> Vec<String> {
    let path = root().join("nix/image-command.json");
    let text = std::fs::read_to_string(&path).expect("read nix/image-command.json");
    let command: Value = serde_json::from_str(&text).expect("nix/image-command.json is JSON");
    let fill = |list: &str, values: &BTreeMap<&str, PathBuf>| -> Vec<String> {
        command[list]
            .as_array()
            .unwrap_or_else(|| panic!("{list} in nix/image-command.json"))
            .iter()
            .map(|arg| {
                let mut arg = arg.as_str().expect("arguments are strings").to_owned();
                for (name, value) in values {
                    arg = arg.replace(&format!("@{name}@"), &value.to_string_lossy());
                }
                assert!(!arg.contains('@'), "unfilled placeholder in `{arg}`");
                arg
            })
            .collect()
    };
    let mut args = fill("argv", values);
    if with_cuda {
        args.extend(fill("cudaArgv", values));
    }
    if extras.launcher {
        args.extend(fill("launcherArgv", values));
    }
    // In nix/images.nix's order: files, programs, env, trees.
    for (list, placeholder, items) in [
        ("fileArgv", "file", extras.files),
        ("programArgv", "program", extras.programs),
        ("envArgv", "env", extras.env),
        ("treeArgv", "tree", extras.trees),
    ] {
        for item in items {
            let mut values = values.clone();
            values.insert(placeholder, PathBuf::from(item));
            args.extend(fill(list, &values));
        }
    }
    args
}

/// Runs the store-built xtask's command (here: this build's xtask) with `store` mounted at
/// /nix/store in a private mount namespace, as a derivation's sandbox has it.
fn assemble_in_store(store: &Path, args: &[String], cairn_root: Option<&Path>) {
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" /nix/store && shift && exec "$@""#)
        .arg("sh")
        .arg(store)
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1")
        .env("CAIRN_REVISION", "test")
        .env("CAIRN_VERSION", "0.0.0");
    if let Some(cairn_root) = cairn_root {
        command.env("CAIRN_ROOT", cairn_root);
    }
    run(&mut command);
}

#[test]
fn the_flakes_assembler_command_turns_a_store_closure_into_an_image_skopeo_reads() {
    let (Some(patchelf), Some(skopeo), Some(umoci)) = (
        testkit::require_tool("patchelf", "apt-get install patchelf"),
        testkit::require_tool("skopeo", "apt-get install skopeo"),
        testkit::require_tool("umoci", "apt-get install umoci"),
    ) else {
        return;
    };
    let dir = scratch_dir("nix-image");
    let (store, binary) = store_like_closure(&dir, &patchelf);
    if !testkit::require_root("mounting the closure at /nix/store") {
        return;
    }
    std::fs::create_dir_all(STORE).expect("create the /nix/store mount point");
    let layout = dir.join("oci");
    let values = BTreeMap::from([
        ("name", PathBuf::from(IMAGE)),
        ("binary", binary.clone()),
        ("out", layout.clone()),
        ("caBundle", image_support::test_ca_bundle()),
        ("cache", dir.join("cache")),
        ("cuda", dir.join("no-cuda")),
        // inference-cuda's launcherArgv, with the closure's binary standing in for cuda-launch:
        // it goes to /usr/local/bin, the binary to /usr/local/libexec/cairn.
        ("launcher", binary.clone()),
    ]);
    // A data file of the closure, placed by fileArgv as the new images' configs are.
    let config = store.join(PACKAGE).join("share/hello.conf");
    std::fs::create_dir_all(config.parent().expect("share/")).expect("create share/");
    std::fs::write(&config, "greeting = hello\n").expect("write hello.conf");
    let extra_file = format!("{STORE}/{PACKAGE}/share/hello.conf:/etc/hello.conf");
    let extras = Extras {
        files: &[extra_file],
        trees: &[],
        programs: &[],
        env: &[],
        launcher: true,
    };
    assemble_in_store(&store, &assembler_arguments(&values, false, &extras), None);

    let reference = format!("oci:{}:{IMAGE}", layout.display());
    let config: Value = serde_json::from_str(&run(
        Command::new(&skopeo).args(["inspect", "--config", &reference])
    ))
    .expect("skopeo prints the config as JSON");
    let entrypoint: Vec<String> = config["config"]["Entrypoint"]
        .as_array()
        .expect("an Entrypoint")
        .iter()
        .map(|arg| arg.as_str().expect("string").to_owned())
        .collect();
    assert!(!entrypoint.is_empty(), "empty Entrypoint in {config}");

    let bundle = dir.join("bundle");
    run(Command::new(umoci)
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{IMAGE}", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let libc = rootfs.join("nix/store").join(GLIBC).join("lib/libc.so.6");
    assert!(
        libc.is_file(),
        "the closure's libc is packed at its store path"
    );
    // Everything the binary loads comes from the closure. A library found in the host's own
    // directories would be a hard error inside a build sandbox, where they do not exist.
    let leaked: Vec<_> = ["lib", "lib64", "usr/lib", "usr/lib64"]
        .iter()
        .map(|dir| rootfs.join(dir))
        .filter(|dir| dir.exists())
        .collect();
    assert!(
        leaked.is_empty(),
        "host library directories in an image of a store closure: {leaked:?}"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/hello.conf")).expect("/etc/hello.conf"),
        "greeting = hello\n",
        "fileArgv placed the extra file"
    );
    for placed in [
        format!("usr/local/bin/{IMAGE}"),
        format!("usr/local/libexec/cairn/{IMAGE}"),
    ] {
        assert!(
            rootfs.join(&placed).is_file(),
            "launcherArgv: {placed} missing"
        );
    }
    let output = run(Command::new("chroot")
        .arg(&rootfs)
        .args(&entrypoint)
        .arg(GREETING));
    assert_eq!(output.trim(), GREETING);
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|list| {
            list.iter()
                .map(|item| item.as_str().expect("string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Owner and mode of a path of an unpacked root filesystem (umoci, as root, keeps the layer's).
fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

/// One image as nix/images.nix builds the other servers' images: a catalog name, the
/// image's executable and programs of the store closure. Returns its config and unpacked rootfs.
fn catalog_image_from_store(
    dir: &Path,
    store: &Path,
    tools: (&Path, &Path),
    values: &BTreeMap<&str, PathBuf>,
    extras: &Extras,
    cairn_root: Option<&Path>,
) -> (Value, PathBuf) {
    let (skopeo, umoci) = tools;
    let name = values["name"].to_string_lossy().into_owned();
    assemble_in_store(
        store,
        &assembler_arguments(values, false, extras),
        cairn_root,
    );
    let layout = &values["out"];
    let config: Value = serde_json::from_str(&run(Command::new(skopeo).args([
        "inspect",
        "--config",
        &format!("oci:{}:{name}", layout.display()),
    ])))
    .expect("skopeo prints the config as JSON");
    let bundle = dir.join(format!("bundle-{name}"));
    run(Command::new(umoci)
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{name}", layout.display()))
        .arg(&bundle));
    (config, bundle.join("rootfs"))
}

/// nginx, PostgreSQL and Garage from a store closure through the flake's command: the same
/// entrypoint, cmd, stop signal, env and non-root writable directories as the cargo backend's
/// images (the catalog's), the programs at their paths and executable, and the entrypoint
/// starts from the image's root filesystem.
#[test]
fn the_other_servers_images_from_a_store_closure_carry_the_catalogs_metadata() {
    let (Some(patchelf), Some(skopeo), Some(umoci)) = (
        testkit::require_tool("patchelf", "apt-get install patchelf"),
        testkit::require_tool("skopeo", "apt-get install skopeo"),
        testkit::require_tool("umoci", "apt-get install umoci"),
    ) else {
        return;
    };
    let dir = scratch_dir("nix-catalog-images");
    let (store, program) = store_like_closure(&dir, &patchelf);
    if !testkit::require_root("mounting the closure at /nix/store") {
        return;
    }
    std::fs::create_dir_all(STORE).expect("create the /nix/store mount point");
    let data = store.join(PACKAGE).join("share/mime.types");
    std::fs::create_dir_all(data.parent().expect("share/")).expect("create share/");
    std::fs::write(&data, "types { text/html html; }\n").expect("write mime.types");
    let tools = (skopeo.as_path(), umoci.as_path());
    let values = |name: &str| {
        BTreeMap::from([
            ("name", PathBuf::from(name)),
            // The helper (http-probe, pg-entrypoint) or Garage: here the store's program.
            ("binary", program.clone()),
            ("out", dir.join(format!("oci-{name}"))),
            ("caBundle", image_support::test_ca_bundle()),
            ("cache", dir.join("cache")),
            ("cuda", dir.join("no-cuda")),
        ])
    };
    let program = program.to_string_lossy().into_owned();
    let starts = |rootfs: &Path, config: &Value| -> String {
        let mut argv = strings(&config["config"]["Entrypoint"]);
        argv.extend(strings(&config["config"]["Cmd"]));
        run(Command::new("chroot").arg(rootfs).args(&argv))
            .trim()
            .to_owned()
    };

    // nginx: nixpkgs' binary at /usr/sbin/nginx, its mime.types, the workspace's web/ as site.
    let workspace = dir.join("workspace");
    std::fs::create_dir_all(workspace.join("web")).expect("create web/");
    std::fs::write(workspace.join("web/index.html"), "<h1>site</h1>\n").expect("index.html");
    let (config, rootfs) = catalog_image_from_store(
        &dir,
        &store,
        tools,
        &values("nginx"),
        &Extras {
            files: &[format!(
                "{STORE}/{PACKAGE}/share/mime.types:/etc/nginx/mime.types"
            )],
            trees: &[],
            programs: &[format!("{program}:/usr/sbin/nginx")],
            env: &[],
            launcher: false,
        },
        Some(&workspace),
    );
    let nginx = &config["config"];
    assert_eq!(
        strings(&nginx["Entrypoint"]),
        [
            "/usr/sbin/nginx",
            "-e",
            "stderr",
            "-c",
            "/etc/nginx/nginx.conf"
        ]
    );
    assert_eq!(strings(&nginx["Cmd"]), ["-g", "daemon off;"]);
    assert_eq!(nginx["StopSignal"], "SIGQUIT");
    assert_eq!(nginx["User"], "65532:65532");
    assert_eq!(
        owner_and_mode(&rootfs.join("usr/sbin/nginx")),
        (0, 0, 0o755)
    );
    assert_eq!(
        owner_and_mode(&rootfs.join("usr/local/bin/http-probe")),
        (0, 0, 0o755)
    );
    assert_eq!(
        owner_and_mode(&rootfs.join("var/cache/nginx")),
        (65532, 65532, 0o755),
        "nginx's temp directory belongs to the non-root user"
    );
    assert!(
        rootfs.join("etc/nginx/nginx.conf").is_file(),
        "the catalog's standalone config"
    );
    assert!(rootfs.join("etc/nginx/mime.types").is_file());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("srv/www/index.html")).expect("site"),
        "<h1>site</h1>\n"
    );
    assert_eq!(
        starts(&rootfs, &config),
        // The stand-in program is echo, which takes nginx's `-e` as its own option.
        "stderr -c /etc/nginx/nginx.conf -g daemon off;",
        "the entrypoint runs from the image with the catalog's arguments"
    );

    // PostgreSQL: the programs at their store paths (executable), the package's closure given
    // whole as files (the libraries the ELF closure packs stay in the system layer only), PATH
    // naming the store's bin/ over the catalog's.
    // closureInfo's store paths, each given whole as nix/images.nix does.
    let closure: Vec<String> = [PACKAGE, GLIBC]
        .iter()
        .map(|path| format!("{STORE}/{path}:{STORE}/{path}"))
        .collect();
    let store_bin = format!("{STORE}/{PACKAGE}/bin");
    let (config, rootfs) = catalog_image_from_store(
        &dir,
        &store,
        tools,
        &values("postgres"),
        &Extras {
            files: &[],
            trees: &closure,
            programs: &[format!("{program}:{program}")],
            env: &[format!("PATH=/usr/local/bin:{store_bin}:/usr/bin:/bin")],
            launcher: false,
        },
        None,
    );
    let postgres = &config["config"];
    assert_eq!(
        strings(&postgres["Entrypoint"]),
        ["/usr/local/bin/pg-entrypoint"]
    );
    assert_eq!(postgres["StopSignal"], "SIGINT");
    let env = strings(&postgres["Env"]);
    assert_eq!(
        env.iter()
            .filter(|e| e.starts_with("PATH="))
            .collect::<Vec<_>>(),
        [&format!("PATH=/usr/local/bin:{store_bin}:/usr/bin:/bin")]
    );
    assert!(env.contains(&"PGDATA=/var/lib/postgresql/data".to_owned()));
    assert!(env.contains(&"PGHOST=/var/lib/postgresql/data".to_owned()));
    assert_eq!(
        owner_and_mode(&rootfs.join("var/lib/postgresql/data")),
        (65532, 65532, 0o755)
    );
    assert_eq!(
        owner_and_mode(&rootfs.join(program.trim_start_matches('/'))).2,
        0o755,
        "a program stays executable although the closure's files also name it"
    );
    assert!(
        rootfs
            .join(format!("nix/store/{PACKAGE}/share/mime.types"))
            .is_file()
    );
    let app_layer = layer_listing(&values("postgres")["out"], "postgres", usize::MAX);
    let libc = format!("nix/store/{GLIBC}/lib/libc.so.6");
    assert!(
        !app_layer.contains(&libc),
        "{libc} is packed by the system layer, not again by the app layer: {app_layer:?}"
    );
    assert!(app_layer.contains(&format!("nix/store/{GLIBC}/lib/libc.so")));
    assert_eq!(starts(&rootfs, &config), "");
    // The helper found through the image's PATH, as pg-entrypoint finds initdb and postgres.
    let found = run(Command::new("chroot")
        .arg(&rootfs)
        .arg(format!("{store_bin}/{IMAGE}"))
        .arg(GREETING));
    assert_eq!(found.trim(), GREETING);

    // Garage: /usr/local/bin/garage, `server`, its data and metadata directories the user's.
    let (config, rootfs) = catalog_image_from_store(
        &dir,
        &store,
        tools,
        &values("garage"),
        &Extras {
            files: &[],
            trees: &[],
            programs: &[],
            launcher: false,
            env: &[],
        },
        None,
    );
    let garage = &config["config"];
    assert_eq!(strings(&garage["Entrypoint"]), ["/usr/local/bin/garage"]);
    assert_eq!(strings(&garage["Cmd"]), ["server"]);
    for dir in ["var/lib/garage/data", "var/lib/garage/meta"] {
        assert_eq!(
            owner_and_mode(&rootfs.join(dir)),
            (65532, 65532, 0o755),
            "{dir}"
        );
    }
    assert_eq!(starts(&rootfs, &config), "server");
}

/// The paths of one layer of image `name` in `layout` (`index`: its position, usize::MAX for the
/// last one, the app layer), as `tar` lists them.
fn layer_listing(layout: &Path, name: &str, index: usize) -> Vec<String> {
    let read_json = |digest: &str| -> Value {
        let hex = digest.trim_start_matches("sha256:");
        let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).expect("read blob");
        serde_json::from_slice(&bytes).expect("blob is JSON")
    };
    let index_json: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("read index.json"))
            .expect("index.json is JSON");
    let manifest = index_json["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap_or_else(|| panic!("{name} in {index_json}"));
    let manifest = read_json(manifest["digest"].as_str().expect("digest"));
    let layers = manifest["layers"].as_array().expect("layers");
    let layer = &layers[index.min(layers.len() - 1)];
    let hex = layer["digest"]
        .as_str()
        .expect("digest")
        .trim_start_matches("sha256:");
    run(Command::new("tar")
        .arg("-tzf")
        .arg(layout.join("blobs/sha256").join(hex)))
    .lines()
    .map(|line| {
        line.trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned()
    })
    .collect()
}
