//! The assembler command the flake's image derivations run (`nix/image-command.json`, read by
//! `nix/images.nix`), run here with the same arguments on a store-like closure directory built by
//! the test: a dynamically linked binary whose interpreter and RUNPATH point into
//! `/nix/store/…-glibc`, as every glibc binary Nix builds does. The layout it writes must be one
//! skopeo reads, and the binary must start from the image's root filesystem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const GLIBC: &str = "/nix/store/0c7c0ip9h0qs4bd8xmp8m2nxlbzyp4ra-glibc-cairn-test";
const PACKAGE: &str = "/nix/store/1wh6m2mlpv2yd7k2aiz3jgbf5wxc0y6z-hello-cairn-test";
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

/// A closure directory (`closure/nix/store/…-glibc/lib`) and a package binary patched to load
/// its interpreter and libc from that store path, like a Nix-built glibc binary.
fn store_like_closure(dir: &Path, patchelf: &Path) -> (PathBuf, PathBuf) {
    let closure = dir.join("closure");
    let glibc_lib = closure.join(GLIBC.trim_start_matches('/')).join("lib");
    std::fs::create_dir_all(&glibc_lib).expect("create glibc dir");
    let interpreter = run(Command::new(patchelf).args(["--print-interpreter", "/bin/echo"]));
    let interpreter_name = Path::new(interpreter.trim())
        .file_name()
        .expect("interpreter file name")
        .to_owned();
    std::fs::copy(
        Path::new(interpreter.trim())
            .canonicalize()
            .expect("interpreter"),
        glibc_lib.join(&interpreter_name),
    )
    .expect("copy interpreter");
    for needed in run(Command::new(patchelf).args(["--print-needed", "/bin/echo"])).lines() {
        std::fs::copy(host_library(needed), glibc_lib.join(needed)).expect("copy library");
    }
    std::os::unix::fs::symlink("libc.so.6", glibc_lib.join("libc.so")).expect("symlink");

    let binary = dir
        .join("package")
        .join(PACKAGE.trim_start_matches('/'))
        .join("bin/hello");
    std::fs::create_dir_all(binary.parent().expect("bin dir")).expect("create bin dir");
    std::fs::copy("/bin/echo", &binary).expect("copy /bin/echo");
    run(Command::new(patchelf)
        .arg("--set-interpreter")
        .arg(Path::new(GLIBC).join("lib").join(&interpreter_name))
        .arg("--set-rpath")
        .arg(Path::new(GLIBC).join("lib"))
        .arg(&binary));
    (closure, binary)
}

/// nix/image-command.json's arguments with the placeholders filled in, as nix/images.nix does.
fn assembler_arguments(values: &BTreeMap<&str, PathBuf>, with_cuda: bool) -> Vec<String> {
    let path = root().join("nix/image-command.json");
    let text = std::fs::read_to_string(&path).expect("read nix/image-command.json");
    let command: Value = serde_json::from_str(&text).expect("nix/image-command.json is JSON");
    let mut args: Vec<&Value> = command["argv"].as_array().expect("argv").iter().collect();
    if with_cuda {
        args.extend(command["cudaArgv"].as_array().expect("cudaArgv"));
    }
    args.into_iter()
        .map(|arg| {
            let mut arg = arg.as_str().expect("arguments are strings").to_owned();
            for (name, value) in values {
                arg = arg.replace(&format!("@{name}@"), &value.to_string_lossy());
            }
            assert!(!arg.contains('@'), "unfilled placeholder in `{arg}`");
            arg
        })
        .collect()
}

/// True once the assembler is part of xtask (the `image` subcommand, from the image branch).
fn xtask_has_image_command() -> bool {
    let help = run(Command::new(env!("CARGO_BIN_EXE_xtask")).arg("--help"));
    help.lines()
        .any(|line| line.trim_start().starts_with("image "))
}

#[test]
fn the_flakes_assembler_command_turns_a_store_closure_into_an_image_skopeo_reads() {
    let (Some(patchelf), Some(skopeo)) = (
        testkit::require_tool("patchelf", "apt-get install patchelf"),
        testkit::require_tool("skopeo", "apt-get install skopeo"),
    ) else {
        return;
    };
    let dir = scratch_dir("nix-image");
    let (closure, binary) = store_like_closure(&dir, &patchelf);
    if !xtask_has_image_command() {
        eprintln!(
            "SKIPPED: xtask has no `image` subcommand yet (the assembler lands from branch image)"
        );
        return;
    }
    let layout = dir.join("oci");
    let values = BTreeMap::from([
        ("name", PathBuf::from(IMAGE)),
        ("binary", binary),
        ("closure", closure),
        ("cuda", dir.join("no-cuda")),
        ("out", layout.clone()),
    ]);
    run(Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(assembler_arguments(&values, false))
        .env("SOURCE_DATE_EPOCH", "1"));

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

    if testkit::is_root() {
        boots_from_its_root_filesystem(&dir, &layout, &entrypoint);
    } else {
        eprintln!("SKIPPED (root only): starting the binary inside the image's root filesystem");
    }
}

/// Unpacks the image with umoci and runs its entrypoint chrooted into the rootfs: the
/// interpreter and libc must come from the closure's store paths inside the image.
fn boots_from_its_root_filesystem(dir: &Path, layout: &Path, entrypoint: &[String]) {
    let Some(umoci) = testkit::require_tool("umoci", "apt-get install umoci") else {
        return;
    };
    let bundle = dir.join("bundle");
    run(Command::new(umoci)
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{IMAGE}", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    assert!(
        rootfs
            .join(GLIBC.trim_start_matches('/'))
            .join("lib/libc.so.6")
            .is_file(),
        "the closure's store paths are in the image"
    );
    let output = run(Command::new("chroot")
        .arg(&rootfs)
        .args(entrypoint)
        .arg(GREETING));
    assert_eq!(output.trim(), GREETING);
}
