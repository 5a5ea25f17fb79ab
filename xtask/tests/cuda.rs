//! The shared CUDA layer from real CUDA runtime libraries: the `nvidia-cuda-runtime-cu12` wheel
//! from PyPI (pinned) holds libcudart. Two GPU images get the same CUDA layer, two runs give the
//! same digest, libcuda is never packed, and a directory without a needed group is an error that
//! names it.

mod image_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use image_support::{blob_json, compile_fixture, index, layers, xtask_unchecked};

const WHEEL: &str = "nvidia-cuda-runtime-cu12==12.9.79";
/// The CUDA layer of libcudart 12.9.79 under the pinned tar + gzip settings.
const CUDART_LAYER: &str =
    "sha256:6530751902b43d0184a87491991c4a38a9ed088bcbc9353187faf1de2b72d150";

/// Downloads the wheel and unpacks its libraries into `dir/cuda`; None when pip is missing.
fn cuda_dir(dir: &Path) -> Option<PathBuf> {
    testkit::require_tool("pip3", "apt-get install python3-pip")?;
    let wheels = dir.join("wheels");
    let status = Command::new("pip3")
        .args([
            "download",
            WHEEL,
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(&wheels)
        .status()
        .expect("pip3");
    assert!(status.success(), "pip3 download {WHEEL}");
    let cuda = dir.join("cuda");
    let unpack = "import sys, zipfile, pathlib, glob\n\
        out = pathlib.Path(sys.argv[2]); out.mkdir()\n\
        z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0])\n\
        for i in z.infolist():\n    if '/lib/' in i.filename and '.so' in i.filename:\n        (out / pathlib.Path(i.filename).name).write_bytes(z.read(i))\n";
    let status = Command::new("python3")
        .args(["-c", unpack])
        .arg(&wheels)
        .arg(&cuda)
        .status()
        .expect("python3");
    assert!(status.success(), "unpacking the wheel");
    assert!(
        cuda.join("libcudart.so.12").is_file(),
        "the wheel holds libcudart.so.12"
    );
    // A driver library in the directory (as in a toolkit's stubs) must never reach an image.
    std::fs::write(cuda.join("libcuda.so.1"), b"driver stub").expect("stub");
    Some(cuda)
}

fn gpu_images(dir: &Path, cuda: &Path, out: &Path, groups: &str) -> std::process::Output {
    let one = compile_fixture(dir, "gpu-one", "one");
    let two = compile_fixture(dir, "gpu-two", "two");
    let args = [
        "image".to_owned(),
        "--out".into(),
        out.display().to_string(),
        "--cuda-dir".into(),
        cuda.display().to_string(),
        "--cuda-groups".into(),
        groups.into(),
        "--binary".into(),
        format!("gpu-a={}", one.display()),
        "--binary".into(),
        format!("gpu-b={}", two.display()),
        "--gpu".into(),
        "gpu-a".into(),
        "--gpu".into(),
        "gpu-b".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    xtask_unchecked(&args, &[])
}

fn layer_paths(layout: &Path, digest: &str) -> Vec<String> {
    let blob = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let file = std::fs::File::open(blob).expect("layer");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn cuda_libraries_become_one_shared_stable_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(cuda) = cuda_dir(dir.path()) else {
        return;
    };
    let (first, second) = (dir.path().join("oci-1"), dir.path().join("oci-2"));
    for out in [&first, &second] {
        let output = gpu_images(dir.path(), &cuda, out, "cudart");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let a = layers(&first, "gpu-a");
    assert_eq!(a.len(), 3, "system, cuda-cudart, app");
    assert_eq!(
        a[1],
        layers(&first, "gpu-b")[1],
        "GPU images share the CUDA layer"
    );
    assert_eq!(
        a[1],
        layers(&second, "gpu-a")[1],
        "the CUDA layer is stable across runs"
    );
    assert_eq!(a[1], CUDART_LAYER);
    let paths = layer_paths(&first, &a[1]);
    assert!(
        paths.contains(&"usr/local/cuda/lib64/libcudart.so.12".to_owned()),
        "{paths:?}"
    );
    assert!(
        !paths.iter().any(|p| p.contains("libcuda.so")),
        "libcuda packed: {paths:?}"
    );
    let (_, manifest) = index(&first)
        .into_iter()
        .find(|(n, _)| n == "gpu-a")
        .expect("gpu-a");
    let config_digest = blob_json(&first, &manifest)["config"]["digest"]
        .as_str()
        .expect("config")
        .to_owned();
    let env = blob_json(&first, &config_digest)["config"]["Env"].clone();
    let env: Vec<&str> = env
        .as_array()
        .expect("Env")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(
        env.contains(&"NVIDIA_DRIVER_CAPABILITIES=compute,utility"),
        "{env:?}"
    );
    assert!(env.contains(&"NVIDIA_VISIBLE_DEVICES=all"), "{env:?}");
    assert!(
        env.iter()
            .any(|e| e.starts_with("LD_LIBRARY_PATH=/usr/local/cuda/lib64")),
        "{env:?}"
    );
}

#[test]
fn a_cuda_directory_without_a_needed_group_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(cuda) = cuda_dir(dir.path()) else {
        return;
    };
    let out = dir.path().join("oci");
    let output = gpu_images(dir.path(), &cuda, &out, "cudart,cublas");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&cuda.display().to_string()) && stderr.contains("libcublas.so"),
        "{stderr}"
    );
}
