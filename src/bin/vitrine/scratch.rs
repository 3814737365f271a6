//! Temporary databases of the benchmarks and evaluations: removed when
//! the run ends, also when Ctrl-C or SIGTERM ends it (a stopped `bench open`
//! at 100,000 products left hundreds of MB in the temporary folder).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The folders [`scratch`] made that still exist.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A temporary folder, removed on drop or by a stopping signal.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|d| d != self.dir.path());
        // (`TempDir` removes the folder after this.)
    }
}

/// A new temporary folder. From the first one on, a Ctrl-C or SIGTERM
/// removes every live one and ends the process (exit 130 or 143): a
/// scratch database cannot be resumed, so there is nothing to stop
/// cleanly for.
pub fn scratch() -> anyhow::Result<Scratch> {
    watch_signals();
    let dir = tempfile::tempdir()?;
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.path().to_path_buf());
    Ok(Scratch { dir })
}

/// Blocks SIGINT and SIGTERM in this thread and those it starts from now
/// on, and waits for them in a thread of its own, which may remove folders
/// (a signal handler may not). Signals the process was started ignoring
/// stay ignored.
#[cfg(unix)]
fn watch_signals() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain libc calls on a local signal set; the query with a
        // null handler changes nothing.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGINT, libc::SIGTERM] {
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, std::ptr::null(), &mut old);
                if old.sa_sigaction != libc::SIG_IGN {
                    libc::sigaddset(&mut set, sig);
                }
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return;
            }
        }
        std::thread::spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits on a signal set this thread owns.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            for d in live.iter() {
                let _ = std::fs::remove_dir_all(d);
            }
            eprintln!("stopped by a signal; the temporary database was removed");
            std::process::exit(128 + sig);
        });
    });
}

#[cfg(not(unix))]
fn watch_signals() {}
