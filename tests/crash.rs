//! Kills a real writer process with SIGKILL at random points and checks that
//! nothing acknowledged is lost and that the index agrees with storage.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::vector_for;
use rand::{Rng, SeedableRng};
use vitrine::{Attributes, Db, Durability, Filter, Metric, SimilarTo};

const DIM: usize = 16;
const ROUNDS: usize = 24;

fn open(dir: &std::path::Path, checkpoint_on_drop: bool) -> vitrine::Result<Db> {
    Db::builder()
        .durability(Durability::Immediate)
        .vector_space("embedding", DIM, Metric::Cosine)
        .build_threads(1)
        .checkpoint_on_drop(checkpoint_on_drop)
        .open(dir)
}

/// The child: runs only when the parent sets `VITRINE_CRASH_DIR`.
#[test]
fn crash_child_process() {
    let Ok(dir) = std::env::var("VITRINE_CRASH_DIR") else {
        return;
    };
    let round: usize = std::env::var("VITRINE_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let db = open(dir.as_ref(), true).expect("child open");
    println!("ready");
    for i in 0.. {
        let id = format!("r{round}-{i}");
        let attrs = Attributes::new().price(i as f64).in_stock(i % 2 == 0);
        db.insert(&id, attrs, [("embedding", vector_for(&id, DIM))])
            .expect("child insert");
        // Only now is the write acknowledged.
        println!("ack {id}");
    }
}

#[test]
fn sigkill_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let mut acked: Vec<String> = Vec::new();
    let mut killed_before_ready = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("VITRINE_CRASH_DIR", dir.path())
            .env("VITRINE_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = Arc::clone(&lines);
            let out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            })
        };
        // Some kills land while the child opens (index rebuild, checkpoint).
        let ms = if round % 6 == 5 {
            rng.gen_range(0..40)
        } else {
            rng.gen_range(60..400)
        };
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        let lines = lines.lock().unwrap();
        if !lines.iter().any(|l| l.ends_with("ready")) {
            killed_before_ready += 1;
        }
        acked.extend(
            lines
                .iter()
                .filter_map(|l| l.strip_prefix("ack "))
                .map(str::to_string),
        );

        // Reopen in this process and check.
        let db = open(dir.path(), round % 2 == 0).expect("reopen after SIGKILL");
        for id in &acked {
            let p = db
                .get(id)
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acknowledged {id} lost"));
            assert_eq!(p.vectors["embedding"], vector_for(id, DIM));
        }
        for id in db.ids() {
            let v = vector_for(&id, DIM);
            let hits = db
                .similar(SimilarTo::Vector(&v), 10, &Filter::new())
                .unwrap();
            assert!(
                hits.iter().any(|h| h.id == id),
                "round {round}: stored {id} not found by its own vector"
            );
        }
        assert!(db.len() >= acked.len());
    }
    assert!(
        acked.len() > ROUNDS,
        "the child acknowledged only {} writes",
        acked.len()
    );
    eprintln!(
        "{ROUNDS} rounds, {} acknowledged writes, {killed_before_ready} kills before the child was ready",
        acked.len()
    );
}
