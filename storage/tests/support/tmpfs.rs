//! Children that run on a small private tmpfs, to fill a disk for real:
//! shared by the storage crate's and the engine's full-disk tests.
//!
//! The child runs in its own mount namespace, which needs the privilege to
//! mount (root, as in CI); elsewhere [`spawn_on_tmpfs`] says so and the test
//! skips.

use std::ffi::{CStr, CString};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Free bytes of the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> u64 {
    let path = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs fills the struct it is given; the path is a C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(path.as_ptr(), &mut s), 0);
        s.f_bavail as u64 * s.f_frsize as u64
    }
}

/// Spawns `cmd` with a tmpfs of `size` (`c"size=8m"`) mounted on `dir` in
/// its own mount namespace, stdout and stderr piped; `None` (with a
/// message) where mounting is not allowed.
pub fn spawn_on_tmpfs(mut cmd: Command, dir: &Path, size: &'static CStr) -> Option<Child> {
    let target = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return fail();
            }
            // Keep the mount to this namespace.
            let root = c"/";
            let flags = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            let fs = c"tmpfs";
            if libc::mount(
                fs.as_ptr(),
                target.as_ptr(),
                fs.as_ptr(),
                0,
                size.as_ptr().cast(),
            ) != 0
            {
                return fail();
            }
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => Some(child),
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a private tmpfs here ({e}); needs root");
            None
        }
    }
}

/// Waits for `child` up to `limit` (killing it and failing past that: a
/// hang after the disk filled) and returns its status, stdout and stderr.
pub fn wait_bounded(mut child: Child, limit: Duration) -> (ExitStatus, String, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the child hung after the disk filled:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    (
        status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
