//! Freeing a graph leaves no thread behind: hnsw_rs clears its layers with
//! rayon, whose global pool (never used here) would start and stay for the
//! process's life, and, started at the thread limit, panic inside a drop.
#![cfg(target_os = "linux")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::clustered;
use vitrine_index::{
    FlatIndex, IndexConfig, Metric, PlanHint, SearchOptions, SpaceIndex, VectorIndex,
};

const CHILD: &str = "VITRINE_TEST_GRAPH_DROP_CHILD";

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn freeing_a_graph_leaves_no_thread_behind() {
    // In a process of its own: other tests start and end threads.
    if std::env::var_os(CHILD).is_none() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "freeing_a_graph_leaves_no_thread_behind",
                "--exact",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let (data, queries) = clustered(11, 600, 1, 16, 4);
    let mut flat = FlatIndex::new(16, Metric::Cosine).unwrap();
    for (i, v) in data.iter().enumerate() {
        flat.upsert(i as u64, v).unwrap();
    }
    let before = threads();
    {
        // One build thread: no pool of its own.
        let idx = SpaceIndex::build(flat, IndexConfig::default(), 1).unwrap();
        let graph = SearchOptions::new(3).with_plan(PlanHint::Graph);
        let hits = idx.search(&queries[0], &graph, None).unwrap();
        assert_eq!(hits.hits.len(), 3);
    }
    // The pool that freed it ends its threads as it goes.
    let start = Instant::now();
    while threads() != before && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(threads(), before, "threads left after the graph was freed");
}
