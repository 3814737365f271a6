//! Helpers shared by the integration tests.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A deterministic vector for an id, so a parent and a crashed child agree on it.
pub fn vector_for(id: &str, dim: usize) -> Vec<f32> {
    let seed = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Exact cosine similarity, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb)) as f32
}

/// Copies a folder tree (a database, to damage or compare the copy).
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A record of raw bytes under version 0: to write what an older build
/// stored, or to damage what the engine stored.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Raw(pub Vec<u8>);

impl vitrine_storage::Record for Raw {
    const VERSION: u8 = 0;
}

/// Gives `cmd`'s child the default SIGINT and SIGTERM actions, as a
/// terminal does: a test run in the background of a shell inherits SIGINT
/// ignored, and a signal sent to the child then went nowhere.
/// (Linux: `libc` is a test dependency there only.)
#[cfg(target_os = "linux")]
pub fn default_stop_signals(cmd: &mut std::process::Command) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
}
