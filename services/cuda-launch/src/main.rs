//! `cuda-launch`: the entrypoint of a GPU image, installed as `/usr/local/bin/NAME` with the CUDA
//! build of NAME at `/usr/local/libexec/cairn/NAME`. The CUDA build records `libcuda.so.1` as
//! needed (candle links the driver API), so without the NVIDIA driver the dynamic loader would
//! stop it before `main` with its own message. This launcher asks the loader first: it
//! `dlopen`s `libcuda.so.1` (the same search the loader does for the CUDA build: LD_LIBRARY_PATH,
//! the loader cache, the default directories, this binary's RUNPATH), and then `exec`s the CUDA
//! build with every argument, so `NAME healthcheck` and the other subcommands reach it
//! unchanged. When the driver does not load, it prints one line naming libcuda.so.1 and the fix
//! and exits 1, whatever the arguments: nothing serves, so the health check (`NAME healthcheck`,
//! through this launcher too) fails with the same line and the health route never answers.
//!
//! Only std and libc: it must run where the CUDA build cannot.

use std::ffi::{CStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The driver's soname, as the CUDA build's DT_NEEDED names it.
const DRIVER: &CStr = c"libcuda.so.1";

/// Where the CUDA builds sit in the image (xtask's `image::plan::LIBEXEC_DIR`).
const LIBEXEC_DIR: &str = "/usr/local/libexec/cairn";

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let name = own_name(&argv0);
    if let Err(reason) = load_driver() {
        eprintln!("{}", driver_missing(&name, &reason));
        return ExitCode::FAILURE;
    }
    let target = Path::new(LIBEXEC_DIR).join(&name);
    // Only returns on failure; the driver handle stays open until the exec replaces the process.
    let error = std::process::Command::new(&target)
        .arg0(&argv0)
        .args(args)
        .exec();
    eprintln!(
        "{name}: cannot start the CUDA build {}: {error}",
        target.display()
    );
    ExitCode::FAILURE
}

/// The name this launcher was installed under (`inference`): the file name of the running
/// executable, else of argv[0].
fn own_name(argv0: &OsString) -> String {
    let path = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(argv0));
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cuda-launch".to_owned())
}

/// The line printed when the driver does not load, whatever DEVICE says (the CUDA build needs
/// the driver to start at all). "was not found" when the loader found no
/// file (`dlerror` ends in "No such file or directory"), else the loader's reason.
fn driver_missing(name: &str, reason: &str) -> String {
    let what = if reason.ends_with("No such file or directory") {
        "libcuda.so.1 was not found".to_owned()
    } else {
        format!("libcuda.so.1 did not load ({reason})")
    };
    format!(
        "{name}: the CUDA build needs the NVIDIA driver: {what} (run the container with --gpus, and the NVIDIA Container Toolkit on the host)"
    )
}

/// Loads the driver the way the loader would for the CUDA build; the handle is never closed (the
/// exec that follows drops it). `Err` holds `dlerror`'s text.
#[allow(unsafe_code)]
fn load_driver() -> Result<(), String> {
    // SAFETY: DRIVER is a NUL-terminated string; dlopen runs libcuda's initialisers, which is what
    // starting the CUDA build does anyway. dlerror returns a NUL-terminated string owned by libc,
    // valid until the next dl* call on this thread, and it is copied at once.
    unsafe {
        let handle = libc::dlopen(DRIVER.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if !handle.is_null() {
            return Ok(());
        }
        let error = libc::dlerror();
        if error.is_null() {
            return Err("dlopen failed without a reason".to_owned());
        }
        Err(CStr::from_ptr(error).to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_driver_and_the_fix() {
        let line = driver_missing(
            "inference",
            "libcuda.so.1: cannot open shared object file: No such file or directory",
        );
        assert_eq!(
            line,
            "inference: the CUDA build needs the NVIDIA driver: libcuda.so.1 was not found (run the container with --gpus, and the NVIDIA Container Toolkit on the host)"
        );
        let line = driver_missing("inference", "libcuda.so.1: wrong ELF class: ELFCLASS32");
        assert!(
            line.contains("libcuda.so.1 did not load (libcuda.so.1: wrong ELF class: ELFCLASS32)"),
            "{line}"
        );
    }

    #[test]
    fn a_library_that_is_not_there_is_reported_by_the_loader() {
        // The real loader's answer for a soname no machine has, so the "not found" wording is
        // matched against glibc's actual text, not a copy of it.
        #[allow(unsafe_code)]
        // SAFETY: as in load_driver.
        let reason = unsafe {
            let handle = libc::dlopen(c"libcairn-absent.so.7".as_ptr(), libc::RTLD_NOW);
            assert!(handle.is_null());
            CStr::from_ptr(libc::dlerror())
                .to_string_lossy()
                .into_owned()
        };
        assert!(reason.ends_with("No such file or directory"), "{reason}");
    }
}
