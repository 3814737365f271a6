//! Kills a real writer process with SIGKILL at random points and checks that
//! nothing acknowledged is lost and that the index agrees with storage.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::vector_for;
use rand::{Rng, SeedableRng};
use vitrine::{Attributes, Db, Durability, Filter, Metric, Plan, PlanHint, Search, SimilarTo};

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
    // Inserts, with a delete and an upsert of earlier products now and
    // then. Each write is announced ("try"), then acknowledged ("done")
    // once it returned: at most the announced one is in flight at a kill.
    for i in 0.. {
        let id = format!("r{round}-{i}");
        println!("try insert {id}");
        let attrs = Attributes::new().price(i as f64).in_stock(i % 2 == 0);
        db.insert(&id, attrs, [("embedding", vector_for(&id, DIM))])
            .expect("child insert");
        println!("done");
        if i % 4 == 3 {
            let old = format!("r{round}-{}", i - 2);
            println!("try delete {old}");
            assert!(db.delete(&old).expect("child delete"));
            println!("done");
        }
        if i % 5 == 4 {
            let old = format!("r{round}-{}", i - 1);
            println!("try upsert {old}");
            db.upsert(
                &old,
                Attributes::new(),
                [("embedding", vector_for(&format!("{old}-v2"), DIM))],
            )
            .expect("child upsert");
            println!("done");
        }
    }
}

/// A product's vector after a write: `None` once deleted.
fn after(op: &str, id: &str) -> Option<Vec<f32>> {
    match op {
        "insert" => Some(vector_for(id, DIM)),
        "upsert" => Some(vector_for(&format!("{id}-v2"), DIM)),
        _ => None,
    }
}

#[test]
fn sigkill_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    // Each product's acknowledged state (None: deleted), and the write in
    // flight at the last kill, whose product may be in either state.
    let mut expected: std::collections::BTreeMap<String, Option<Vec<f32>>> = Default::default();
    let mut writes = 0usize;
    let mut killed_before_ready = 0;
    let logs = tempfile::tempdir().unwrap();
    let child_err = logs.path().join("child.stderr");
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
            .stderr(std::fs::File::create(&child_err).unwrap())
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
        // Some kills land while the child opens (index rebuild, checkpoint:
        // the previous round's reopen, odd, wrote no checkpoint, so the
        // dumps are stale); the others while it writes, timed from when it
        // is ready (a slow machine could otherwise spend every round
        // opening).
        let ms = if round % 6 == 4 {
            rng.gen_range(0..40)
        } else {
            let opening = std::time::Instant::now();
            while !lines.lock().unwrap().iter().any(|l| l.ends_with("ready"))
                && opening.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            rng.gen_range(20..300)
        };
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        reader.join().unwrap();
        // The kill ended it: a child that failed on its own is a failure,
        // not a crash.
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "round {round}: the child ended before the kill ({status}): {}",
            std::fs::read_to_string(&child_err).unwrap_or_default()
        );
        let lines = lines.lock().unwrap();
        if !lines.iter().any(|l| l.ends_with("ready")) {
            killed_before_ready += 1;
        }
        let mut in_flight: Option<(String, String)> = None;
        for line in lines.iter() {
            if let Some(rest) = line.strip_prefix("try ") {
                let (op, id) = rest.split_once(' ').unwrap();
                in_flight = Some((op.to_string(), id.to_string()));
            } else if line == "done" {
                let (op, id) = in_flight.take().expect("done after try");
                expected.insert(id.clone(), after(&op, &id));
                writes += 1;
            }
        }

        // Reopen in this process and check.
        let db = open(dir.path(), round % 2 == 0).expect("reopen after SIGKILL");
        let (mut graph_found, mut graph_asked) = (0usize, 0usize);
        let flying = in_flight
            .as_ref()
            .map(|(op, id)| (id.as_str(), after(op, id)));
        for (id, want) in &expected {
            let got = db.get(id).unwrap().map(|p| p.vectors["embedding"].clone());
            let in_flight_state = flying.as_ref().is_some_and(|(f, v)| f == id && got == *v);
            assert!(
                got == *want || in_flight_state,
                "round {round}: {id} is {:?} after the kill, acknowledged as {:?}",
                got.as_ref().map(|_| "stored"),
                want.as_ref().map(|_| "stored")
            );
        }
        for id in db.ids() {
            assert!(
                expected.contains_key(&id) || flying.as_ref().is_some_and(|(f, _)| *f == id),
                "round {round}: {id} stored but never written"
            );
            let v = db.get(&id).unwrap().unwrap().vectors["embedding"].clone();
            let hits = db
                .similar(SimilarTo::Vector(&v), 10, &Filter::new())
                .unwrap();
            assert!(
                hits.iter().any(|h| h.id == id),
                "round {round}: stored {id} not found by its own vector"
            );
            // The graph too (the part a kill leaves stale, loaded or
            // rebuilt); a catalog this small is otherwise scanned exactly.
            let graph = db
                .search(&Search::new(SimilarTo::Vector(&v), 10).plan(PlanHint::Graph))
                .unwrap();
            assert_eq!(graph.plan, Plan::Graph, "round {round}");
            graph_found += usize::from(graph.hits.iter().any(|h| h.id == id));
            graph_asked += 1;
        }
        // HNSW finds a stored vector by itself all but never fails to: a
        // graph that lost or mislabelled nodes fails many.
        assert!(
            graph_found * 100 >= graph_asked * 99,
            "round {round}: the graph found {graph_found} of {graph_asked} stored vectors"
        );
        // The in-flight write's outcome is now known: it is what is stored.
        if let Some((_, id)) = &in_flight {
            let got = db.get(id).unwrap().map(|p| p.vectors["embedding"].clone());
            expected.insert(id.clone(), got);
        }
    }
    let deleted = expected.values().filter(|v| v.is_none()).count();
    assert!(
        writes > ROUNDS && deleted > 0,
        "the children acknowledged only {writes} writes ({deleted} deletes)"
    );
    eprintln!(
        "{ROUNDS} rounds, {writes} acknowledged writes ({deleted} deletes), {killed_before_ready} kills before the child was ready"
    );
}

/// The child of the Periodic test: writes, says how many, then waits to be
/// killed (runs only when the parent sets `VITRINE_PERIODIC_DIR`).
#[test]
fn periodic_child_process() {
    let Ok(dir) = std::env::var("VITRINE_PERIODIC_DIR") else {
        return;
    };
    let db = Db::builder()
        .durability(Durability::Periodic {
            interval: Duration::from_millis(50),
        })
        .vector_space("embedding", DIM, Metric::Cosine)
        .build_threads(1)
        .open(&dir)
        .expect("child open");
    for i in 0..200 {
        let id = format!("p{i}");
        db.insert(
            &id,
            Attributes::new(),
            [("embedding", vector_for(&id, DIM))],
        )
        .expect("child insert");
    }
    // Past many intervals (200): sled's flusher writes, then fsyncs, and a
    // slow fsync on a busy machine (another test's child fsyncs every
    // write) holds the next write back for as long.
    std::thread::sleep(Duration::from_secs(10));
    println!("wrote 200");
    std::thread::sleep(Duration::from_secs(60));
}

/// `Durability::Periodic`: a write is acknowledged before it is durable, and
/// survives a kill once an interval has passed (README, "Durability").
#[test]
fn periodic_writes_survive_a_kill_after_an_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "periodic_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VITRINE_PERIODIC_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("wrote 200") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child ended before writing"
        );
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let db = open(dir.path(), false).unwrap();
    assert_eq!(db.len(), 200);
    for i in [0, 99, 199] {
        let id = format!("p{i}");
        let hits = db
            .similar(SimilarTo::Vector(&vector_for(&id, DIM)), 1, &Filter::new())
            .unwrap();
        assert_eq!(hits[0].id, id);
    }
}
