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
/// `files` are `HOST_PATH:/IMAGE/PATH` values: `fileArgv` is repeated once for each.
fn assembler_arguments(
    values: &BTreeMap<&str, PathBuf>,
    with_cuda: bool,
    with_launcher: bool,
    files: &[String],
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
    if with_launcher {
        args.extend(fill("launcherArgv", values));
    }
    for file in files {
        let mut values = values.clone();
        values.insert("file", PathBuf::from(file));
        args.extend(fill("fileArgv", &values));
    }
    args
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
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" /nix/store && shift && exec "$@""#)
        .arg("sh")
        .arg(&store)
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .args(assembler_arguments(&values, false, true, &[extra_file]))
        .env("SOURCE_DATE_EPOCH", "1")
        .env("CAIRN_REVISION", "test")
        .env("CAIRN_VERSION", "0.0.0"));

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
