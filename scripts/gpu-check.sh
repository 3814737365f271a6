#!/usr/bin/env bash
# GPU checks of the exact scorer (issue 7), prepared to run once on a device.
#
# The device image has CUDA but no Rust toolchain and no network, so the
# binaries are built here (cudarc loads libcuda/libcublas/libnvrtc at run
# time: no CUDA toolkit needed to build) and carried:
#
#   scripts/gpu-check.sh prepare        # here: builds .gpu-check/{scorer-tests,scorer-bench}
#   device run: command="bash scripts/gpu-check.sh run", carry=[".gpu-check"], timeout_s=420
#
# `run` needs ~6 minutes at most (each step has its own timeout) and writes to
# $OUT: gpu-tests.log, gpu-figures.json, bench.log, nvidia-smi.txt, summary.json.
#   - GPU vs CPU top-k: 100k x 128 random (k up to 1000, masks, exclusions,
#     exact ties), weighted group queries, streamed chunks, similar_all,
#     and real embeddings when VITRINE_REAL_EMBEDDINGS pointed at a file of
#     raw f32 x 128 at `prepare` (copied into .gpu-check/); without one that
#     case is skipped, and summary.json counts the skips.
#   - Figures: GPU scan throughput / memory bandwidth (batch 1, 8, 64 on
#     1M x 128), the Auto crossover batch size (rows resident), precompute
#     1M x 128 k=20 on the GPU vs the CPU (CPU extrapolated from 2048 queries).
set -uo pipefail

cd "$(dirname "$0")/.."
BIN=.gpu-check

prepare() {
    mkdir -p "$BIN"
    if [ -d .git ] && ! grep -qx "/$BIN/" .git/info/exclude 2>/dev/null; then
        mkdir -p .git/info && echo "/$BIN/" >>.git/info/exclude
    fi
    local tests bench
    tests=$(cargo test -p vitrine-index --features cuda --release --test scorer --no-run \
        --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="scorer": print(m["executable"])' | tail -1)
    bench=$(cargo bench -p vitrine-index --features cuda --bench scorer --no-run \
        --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="scorer": print(m["executable"])' | tail -1)
    if [ -z "$tests" ] || [ -z "$bench" ]; then
        echo "build failed: run the cargo commands above by hand to see why" >&2
        exit 1
    fi
    cp "$tests" "$BIN/scorer-tests"
    cp "$bench" "$BIN/scorer-bench"
    if [ -n "${VITRINE_REAL_EMBEDDINGS:-}" ]; then
        cp "$VITRINE_REAL_EMBEDDINGS" "$BIN/real-embeddings.f32"
    fi
    strip "$BIN"/scorer-* 2>/dev/null || true
    ls -la "$BIN"
    echo "carry [\"$BIN\"] and run: bash scripts/gpu-check.sh run"
}

find_cuda_libs() {
    # cudarc looks for libcublas.so / libnvrtc.so (or .so.12 etc.); the image
    # ships CUDA 13 (.so.13). Link whatever is found under the unversioned name.
    local dir=/tmp/vitrine-cudalibs
    mkdir -p "$dir"
    local roots="/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu /usr/local/nvidia/lib64"
    roots="$roots $(python3 -c 'import site;print(" ".join(site.getsitepackages()))' 2>/dev/null)"
    for lib in cublas cublasLt nvrtc nvrtc-builtins; do
        local f
        f=$(find $roots -maxdepth 6 -name "lib$lib.so*" 2>/dev/null | grep -v stub | sort -V | tail -1)
        if [ -n "$f" ]; then
            ln -sf "$f" "$dir/lib$lib.so"
            ln -sf "$f" "$dir/$(basename "$f")"
            echo "lib$lib -> $f"
        else
            echo "lib$lib not found" >&2
        fi
    done
    export LD_LIBRARY_PATH="$dir:/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
}

run() {
    local out=${OUT:-gpu-check-out}
    mkdir -p "$out"
    if [ ! -x "$BIN/scorer-tests" ]; then
        if command -v cargo >/dev/null; then prepare; else
            echo "no $BIN/scorer-tests: run 'scripts/gpu-check.sh prepare' first and carry $BIN" >&2
            exit 1
        fi
    fi
    nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
    # Not in a pipeline: a pipeline's stage runs in a subshell, and the
    # LD_LIBRARY_PATH it exports would be lost.
    find_cuda_libs >"$out/libs.txt" 2>&1
    cat "$out/libs.txt"
    export VITRINE_GPU=1 RUST_BACKTRACE=1
    # Real embeddings (raw f32 x 128), when `prepare` was given some.
    if [ -f "$BIN/real-embeddings.f32" ]; then
        export VITRINE_REAL_EMBEDDINGS="$BIN/real-embeddings.f32"
    fi

    local t0 tests_rc figures_rc bench_rc
    t0=$(date +%s)
    timeout 120 "$BIN/scorer-tests" --ignored --test-threads=1 --nocapture \
        gpu_matches gpu_streams gpu_similar 2>&1 | tee "$out/gpu-tests.log"
    tests_rc=${PIPESTATUS[0]}
    echo "tests rc=$tests_rc after $(($(date +%s) - t0)) s"

    VITRINE_FIGURES_OUT="$out/gpu-figures.json" timeout 200 "$BIN/scorer-tests" \
        --ignored --exact gpu_figures --nocapture 2>&1 | tee "$out/figures.log"
    figures_rc=${PIPESTATUS[0]}
    echo "figures rc=$figures_rc after $(($(date +%s) - t0)) s"

    timeout 45 "$BIN/scorer-bench" --bench --warm-up-time 1 --measurement-time 3 2>&1 |
        grep -E "scorer_|time:|thrpt:|skipped" | tee "$out/bench.log"
    bench_rc=${PIPESTATUS[0]}

    python3 - "$out" "$tests_rc" "$figures_rc" "$bench_rc" <<'EOF'
import json, os, sys
out, t, f, b = sys.argv[1], *map(int, sys.argv[2:])
fig = {}
try:
    fig = json.load(open(os.path.join(out, "gpu-figures.json")))
except Exception as e:
    fig = {"error": str(e)}
# A test that returned early (no real embeddings given) passed without checking.
try:
    skipped = sum(l.startswith("SKIP") for l in open(os.path.join(out, "gpu-tests.log")))
except Exception:
    skipped = None
json.dump({"gpu_tests_passed": t == 0, "gpu_tests_rc": t, "gpu_tests_skipped": skipped,
           "figures_rc": f, "bench_rc": b, "figures": fig},
          open(os.path.join(out, "summary.json"), "w"), indent=2)
print(open(os.path.join(out, "summary.json")).read())
EOF
    echo "total $(($(date +%s) - t0)) s"
    # A failed GPU test fails the run (its figures are kept above).
    [ "$tests_rc" -eq 0 ] || exit 1
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
