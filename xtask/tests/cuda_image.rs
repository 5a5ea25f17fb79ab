//! The GPU node's image from the pinned CUDA toolchain, on a machine without a GPU or host CUDA:
//! the toolkit compiles kernels for the default compute capabilities, `inference --features cuda`
//! builds through it (the cargo target directory `target/features-cuda` is the cache: cold, the
//! build compiles candle's kernels with nvcc; warm, cargo finds nothing to do), the image's binary
//! finds every library it needs inside the unpacked rootfs (libcuda excepted: the NVIDIA runtime
//! injects it), `docker load` takes the archive, and without a driver the image's entrypoint
//! (`cuda-launch` at /usr/local/bin/inference, the CUDA build behind it in
//! /usr/local/libexec/cairn) stops at start-up with cairn's one line, not the loader's, and
//! never serves; `inference healthcheck` fails with the same line.

mod image_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use image_support::{blob_json, index, xtask};

/// What `cuda-launch` prints when the NVIDIA driver does not load (services/cuda-launch).
const NO_DRIVER: &str = "inference: the CUDA build needs the NVIDIA driver: libcuda.so.1 was not found (run the container with --gpus, and the NVIDIA Container Toolkit on the host)";

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("spawn");
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn toolkit() -> Option<PathBuf> {
    testkit::require_tool("pip3", "apt-get install python3-pip")?;
    testkit::require_tool("cc", "apt-get install gcc")?;
    let output = xtask(&["cuda", "install"], &[]);
    Some(PathBuf::from(stdout(&output)))
}

#[test]
fn pinned_toolkit_compiles_kernels_for_sm80_and_sm90() {
    let Some(root) = toolkit() else {
        return;
    };
    for path in [
        "bin/nvcc",
        "include/cuda.h",
        "nvvm/libdevice/libdevice.10.bc",
    ] {
        assert!(
            root.join(path).is_file(),
            "{path} missing in {}",
            root.display()
        );
    }
    for link in [
        "libcudart.so",
        "libcublas.so",
        "libcublasLt.so",
        "libcurand.so",
        "libnvrtc.so",
    ] {
        let path = root.join("lib64").join(link);
        assert!(path.exists(), "{} does not resolve", path.display());
    }
    let stub = std::fs::read(root.join("lib64/stubs/libcuda.so")).expect("libcuda stub");
    let stub = goblin::elf::Elf::parse(&stub).expect("ELF");
    assert_eq!(stub.soname, Some("libcuda.so.1"));
    assert!(stub.dynsyms.len() > 100, "the stub defines the driver API");

    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("add.cu");
    std::fs::write(
        &kernel,
        "#include <cuda_bf16.h>\n#include <cub/cub.cuh>\n\
         extern \"C\" __global__ void add(const __nv_bfloat16* a, __nv_bfloat16* b, int n) {\n\
         int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) b[i] = __hadd(a[i], b[i]); }\n",
    )
    .expect("write kernel");
    for arch in ["sm_80", "sm_90"] {
        let ptx = dir.path().join(format!("{arch}.ptx"));
        run(Command::new(root.join("bin/nvcc"))
            .args(["--ptx", "-std=c++17", &format!("-arch={arch}"), "-o"])
            .arg(&ptx)
            .arg(&kernel));
        let text = std::fs::read_to_string(&ptx).expect("ptx");
        assert!(
            text.contains(&format!(".target {arch}")),
            "{arch}: {text:.300}"
        );
        assert!(text.contains(".entry add("), "{arch}: no kernel entry");
    }
}

/// Where the loader of the image would find `name`: the binary's RUNPATH, the image's
/// LD_LIBRARY_PATH, then the default directories; symlinks are followed inside `rootfs`.
fn resolve(rootfs: &Path, dirs: &[String], name: &str) -> Option<PathBuf> {
    dirs.iter().find_map(|dir| {
        let mut path = format!("{}/{name}", dir.trim_end_matches('/'));
        for _ in 0..16 {
            let host = rootfs.join(path.trim_start_matches('/'));
            let meta = std::fs::symlink_metadata(&host).ok()?;
            if !meta.file_type().is_symlink() {
                return meta.is_file().then_some(host);
            }
            let target = std::fs::read_link(&host).ok()?;
            let target = target.to_string_lossy();
            path = if target.starts_with('/') {
                target.into_owned()
            } else {
                let parent = Path::new(&path).parent().expect("parent");
                format!("{}/{target}", parent.display())
            };
        }
        None
    })
}

/// Every DT_NEEDED of `binary` and of the libraries it pulls in, resolved inside `rootfs`;
/// returns the sonames that did not resolve (libcuda is the runtime's and is skipped).
fn unresolved(rootfs: &Path, binary: &Path, ld_library_path: &str) -> (Vec<String>, usize) {
    const DEFAULT_DIRS: &[&str] = &[
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
    ];
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue = vec![binary.to_owned()];
    while let Some(file) = queue.pop() {
        let bytes = std::fs::read(&file).expect("read ELF");
        let elf = goblin::elf::Elf::parse(&bytes).expect("parse ELF");
        if let Some(interpreter) = elf.interpreter
            && resolve(rootfs, &["/".into()], interpreter.trim_start_matches('/')).is_none()
        {
            missing.push(interpreter.to_owned());
        }
        let mut dirs: Vec<String> = elf.runpaths.iter().map(|p| (*p).to_owned()).collect();
        dirs.extend(ld_library_path.split(':').map(str::to_owned));
        dirs.extend(DEFAULT_DIRS.iter().map(|d| (*d).to_owned()));
        for needed in &elf.libraries {
            if needed.starts_with("libcuda.so") || !seen.insert((*needed).to_owned()) {
                continue;
            }
            match resolve(rootfs, &dirs, needed) {
                Some(path) => queue.push(path),
                None => missing.push((*needed).to_owned()),
            }
        }
    }
    (missing, seen.len())
}

#[test]
fn inference_cuda_image_resolves_loads_and_stops_without_a_driver() {
    let (Some(toolkit), Some(umoci), Some(docker)) = (
        toolkit(),
        testkit::require_tool("umoci", "apt-get install umoci"),
        testkit::require_docker(),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("oci");
    let started = Instant::now();
    let image = xtask(
        &[
            "image",
            "inference-cuda",
            "--backend",
            "cargo",
            "--format",
            "docker-archive",
            "--json",
            "--out",
            out.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    eprintln!("cuda build + image: {:.0?}", started.elapsed());
    let report: serde_json::Value = serde_json::from_slice(&image.stdout).expect("report JSON");
    let layers = report["images"][0]["layers"]
        .as_array()
        .expect("layers")
        .len();
    assert_eq!(
        layers, 6,
        "system, cudart, cublas, curand, nvrtc, app: {report}"
    );

    // The loader's view, from the unpacked rootfs.
    let (_, manifest) = index(&out)
        .into_iter()
        .find(|(name, _)| name == "inference-cuda")
        .expect("inference-cuda in the index");
    let config_digest = blob_json(&out, &manifest)["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_owned();
    let config = blob_json(&out, &config_digest);
    let env: Vec<String> = config["config"]["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect();
    let ld_library_path = env
        .iter()
        .find_map(|e| e.strip_prefix("LD_LIBRARY_PATH="))
        .expect("LD_LIBRARY_PATH in the image");
    let bundle = dir.path().join("bundle");
    run(Command::new(&umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:inference-cuda", out.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let binary = rootfs.join("usr/local/libexec/cairn/inference");
    let (missing, resolved) = unresolved(&rootfs, &binary, ld_library_path);
    assert!(missing.is_empty(), "not in the image: {missing:?}");
    assert!(
        resolved >= 8,
        "the CUDA build needs cudart, cublas, cublasLt, curand, nvrtc, …"
    );
    // The entrypoint is the launcher: it must start where the CUDA build cannot.
    let launcher = rootfs.join("usr/local/bin/inference");
    let launcher_elf = std::fs::read(&launcher).expect("the launcher");
    let launcher_elf = goblin::elf::Elf::parse(&launcher_elf).expect("launcher ELF");
    assert!(
        !launcher_elf
            .libraries
            .iter()
            .any(|l| l.starts_with("libcu") || l.starts_with("libnv")),
        "the launcher links CUDA: {:?}",
        launcher_elf.libraries
    );
    let (missing, _) = unresolved(&rootfs, &launcher, ld_library_path);
    assert!(
        missing.is_empty(),
        "the launcher's {missing:?} not in the image"
    );
    let packed_driver = walk(&rootfs)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libcuda.so"))
        })
        .collect::<Vec<_>>();
    assert!(
        packed_driver.is_empty(),
        "libcuda packed: {packed_driver:?}"
    );

    // docker load, then the start-up without a driver: one line, the process gone, no health.
    let load = run(Command::new(&docker)
        .args(["load", "--input"])
        .arg(out.with_extension("tar")));
    let loaded = stdout(&load);
    // Every name the archive gave (its content tag and `latest`), all removed at the end.
    let names: Vec<String> = loaded
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Loaded image ID: ")
                .or(l.strip_prefix("Loaded image: "))
        })
        .map(str::to_owned)
        .collect();
    let id = names
        .first()
        .unwrap_or_else(|| panic!("docker load said {loaded:?}"))
        .clone();
    let serve = start_without_gpu(&docker, &id, "serve", &["-e", "DEVICE=cuda"], &[]);
    let health = start_without_gpu(&docker, &id, "healthcheck", &[], &["healthcheck"]);
    // With a libcuda.so.1 to load (the toolkit's link-time stub; healthcheck calls no driver
    // function), the launcher execs the CUDA build with the arguments: its own probe answers.
    let stub = format!(
        "{}:/usr/lib/x86_64-linux-gnu/libcuda.so.1:ro",
        toolkit.join("lib64/stubs/libcuda.so").display()
    );
    let launched = start_without_gpu(&docker, &id, "launched", &["-v", &stub], &["healthcheck"]);
    let _ = Command::new(&docker).arg("rmi").args(&names).output();
    for (what, (exit_code, text)) in [("serve", serve), ("healthcheck", health)] {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_ne!(exit_code, 0, "{what} without a driver exited 0: {text}");
        assert_eq!(
            lines,
            [NO_DRIVER],
            "{what}: cairn's one line, not the loader's: {text}"
        );
    }
    let (exit_code, text) = launched;
    assert_ne!(exit_code, 0, "healthcheck against nothing exited 0: {text}");
    assert!(
        text.trim()
            .starts_with("unhealthy: connecting to http://127.0.0.1:8001/health"),
        "the CUDA build's own healthcheck, reached through the launcher: {text}"
    );
}

/// Runs the image (no `--gpus`) with `options` and `args`; returns its exit code and its output
/// once it has exited.
fn start_without_gpu(
    docker: &Path,
    id: &str,
    what: &str,
    options: &[&str],
    args: &[&str],
) -> (i64, String) {
    let name = format!("cuda-launch-test-{what}-{}", std::process::id());
    let mut command = Command::new(docker);
    command
        .args(["run", "-d", "--name", &name, "--pull", "never"])
        .args(options)
        .arg(id)
        .args(args);
    let started = run(&mut command);
    assert!(!stdout(&started).is_empty());
    let exit_code = wait_for_exit(docker, &name, Duration::from_secs(60));
    let logs = Command::new(docker)
        .args(["logs", &name])
        .output()
        .expect("logs");
    let _ = Command::new(docker).args(["rm", "-f", &name]).output();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
    (exit_code, text)
}

fn wait_for_exit(docker: &Path, name: &str, limit: Duration) -> i64 {
    let deadline = Instant::now() + limit;
    loop {
        let state = Command::new(docker)
            .args([
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                name,
            ])
            .output()
            .expect("docker inspect");
        let state = stdout(&state);
        if let Some(code) = state.strip_prefix("exited ") {
            return code.parse().expect("exit code");
        }
        assert!(
            Instant::now() < deadline,
            "{name} still {state} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => stack.push(path),
                _ => files.push(path),
            }
        }
    }
    files
}
