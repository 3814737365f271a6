//! GPU back end (feature `cuda`): cudarc with dynamic loading.
//!
//! - Rows live in plain device allocations (`cuMemAllocAsync` from the
//!   default pool, or `cuMemAlloc`; never managed memory), uploaded once per
//!   [`LoadedRows`](super::LoadedRows) when they fit in the memory budget,
//!   else streamed through a staging buffer chunk by chunk on every call.
//! - Scores: for batches of up to `gpu_scan_kernel_max_batch` queries, an
//!   NVRTC scan kernel (a warp per row, one pass over the rows per 4 queries,
//!   which reads at ~3 TB/s on an H200); for larger ones cuBLAS sgemm,
//!   `S = R·Qᵀ` for a chunk of rows and a sub-batch of (already weighted)
//!   queries, FP32 (no TF32). sgemm pads a small query dimension to its tile
//!   width, which is why one query costs it more than the scan.
//! - Top-k: an NVRTC kernel selects, per block of `TILE` scores of one query,
//!   its best `k` (mask applied, NaN as `-inf`, ties by doc ascending), then a
//!   merge kernel repeats the selection over the partial lists until one list
//!   per query is left; it is copied back and merged across chunks on the host,
//!   where per-query exclusions are applied (the device over-fetches
//!   `k + longest exclusion list`).
//!
//! Device buffers are kept between calls (grow-only; a scores buffer over
//! 256 MiB is freed after its call), and the last top-k pass writes scores and
//! rows into one buffer, so a small query costs no allocation and one copy
//! back.
//!
//! Every CUDA failure becomes a [`ScorerError`]; the set-up and each call also
//! run under `catch_unwind`, so a panic inside cudarc (a symbol missing from
//! an old driver, say) is an error too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    sys::CUdevice_attribute, CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use super::cpu::{Collector, Job};
use super::{Result, RowMask, Rows, ScorerError};
use crate::search::Hit;

/// Scores per top-k block; must match `TILE` in the kernel source.
const TILE: usize = 4096;
const _: () = assert!(super::GPU_MAX_K == TILE / 2);
const THREADS: u32 = 256;
const GONE_ROW: u32 = u32::MAX;
/// Most queries per sgemm / kernel grid (`gridDim.y` limit is 65535).
const MAX_SUB_BATCH: usize = 8192;
/// Most rows per chunk (cuBLAS dimensions are `i32`).
const MAX_CHUNK_ROWS: usize = 1 << 24;
/// Queries per `vitrine_scan` launch; must match `SCAN_Q` in the kernel.
const SCAN_Q: usize = 4;
/// Scratch buffers larger than this are freed after the call that needed them.
const SCRATCH_KEEP_BYTES: usize = 256 << 20;

const KERNELS: &str = r#"
#define TILE 4096
#define THREADS 256
#define GONE_ROW 0xffffffffu

__device__ __forceinline__ float nan_f() { return __int_as_float(0x7fffffff); }

// Does candidate a (score sa at shared position pa) rank before b?
// Gone (no position, or NaN score) ranks last; ties by doc ascending.
__device__ __forceinline__ bool before(float sa, int pa, float sb, int pb,
        const unsigned* s_row, const unsigned long long* docs, unsigned cs) {
    bool ga = (pa < 0) || (sa != sa);
    bool gb = (pb < 0) || (sb != sb);
    if (gb) return !ga;
    if (ga) return false;
    if (sa != sb) return sa > sb;
    return docs[s_row[pa] - cs] < docs[s_row[pb] - cs];
}

// Block-wide selection of the best k of s_score[0..cnt) into out_s/out_r.
__device__ void select_k(float* s_score, const unsigned* s_row, int cnt, int k,
        const unsigned long long* docs, unsigned cs, float* out_s, unsigned* out_r) {
    __shared__ float w_s[THREADS / 32];
    __shared__ int w_p[THREADS / 32];
    __shared__ int done;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int j = 0; j < k; ++j) {
        float bs = nan_f();
        int bp = -1;
        for (int p = tid; p < cnt; p += THREADS) {
            float s = s_score[p];
            if (before(s, p, bs, bp, s_row, docs, cs)) { bs = s; bp = p; }
        }
        for (int off = 16; off > 0; off >>= 1) {
            float os = __shfl_down_sync(0xffffffffu, bs, off);
            int op = __shfl_down_sync(0xffffffffu, bp, off);
            if (before(os, op, bs, bp, s_row, docs, cs)) { bs = os; bp = op; }
        }
        if (lane == 0) { w_s[warp] = bs; w_p[warp] = bp; }
        __syncthreads();
        if (tid == 0) {
            float s = w_s[0];
            int p = w_p[0];
            for (int w = 1; w < THREADS / 32; ++w) {
                if (before(w_s[w], w_p[w], s, p, s_row, docs, cs)) { s = w_s[w]; p = w_p[w]; }
            }
            bool gone = (p < 0) || (s != s);
            out_s[j] = gone ? nan_f() : s;
            out_r[j] = gone ? GONE_ROW : s_row[p];
            if (!gone) s_score[p] = nan_f();
            done = gone ? 1 : 0;
        }
        __syncthreads();
        if (done) {
            for (int jj = j + 1 + tid; jj < k; jj += THREADS) { out_s[jj] = nan_f(); out_r[jj] = GONE_ROW; }
            return;
        }
    }
}

// scores: column-major n x queries (query q at scores + q*ld).
extern "C" __global__ void vitrine_topk_first(
        const float* scores, int n, long long ld,
        const unsigned long long* docs, unsigned cs,
        const unsigned* mask, long long mask_stride, int has_mask,
        int k, float* out_s, unsigned* out_r, long long out_ld) {
    __shared__ float s_score[TILE];
    __shared__ unsigned s_row[TILE];
    const int tile = blockIdx.x;
    const long long q = blockIdx.y;
    const int base = tile * TILE;
    int cnt = n - base;
    if (cnt > TILE) cnt = TILE;
    const float* src = scores + q * ld + base;
    const unsigned* m = mask + q * mask_stride;
    for (int p = threadIdx.x; p < cnt; p += THREADS) {
        unsigned row = cs + (unsigned)(base + p);
        float s = src[p];
        if (s != s) s = __int_as_float(0xff800000);
        s = s + 0.0f;
        bool ok = !has_mask || ((m[row >> 5] >> (row & 31)) & 1u);
        s_score[p] = ok ? s : nan_f();
        s_row[p] = row;
    }
    __syncthreads();
    select_k(s_score, s_row, cnt, k, docs, cs, out_s + q * out_ld + (long long)tile * k,
             out_r + q * out_ld + (long long)tile * k);
}

// Scores of up to SCAN_Q queries against the rows, one warp per row (four
// rows per step for loads in flight): lanes read consecutive float4s of a row
// (coalesced), then a warp reduction per query. Same output layout as the
// sgemm. For one query this reads each row once at close to copy bandwidth,
// where sgemm pads the query dimension to its tile width.
#define SCAN_Q 4
#define SCAN_ROWS 4
extern "C" __global__ void vitrine_scan(
        const float* __restrict__ rows, int len, int d,
        const float* __restrict__ queries, int qn,
        float* __restrict__ scores, long long ld) {
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long r = warp * SCAN_ROWS; r < len; r += warps * SCAN_ROWS) {
        float acc[SCAN_ROWS][SCAN_Q];
        #pragma unroll
        for (int u = 0; u < SCAN_ROWS; ++u) {
            #pragma unroll
            for (int q = 0; q < SCAN_Q; ++q) acc[u][q] = 0.0f;
        }
        if ((d & 3) == 0) {
            const int d4 = d >> 2;
            for (int j = lane; j < d4; j += 32) {
                float4 x[SCAN_ROWS];
                #pragma unroll
                for (int u = 0; u < SCAN_ROWS; ++u) {
                    x[u] = (r + u < len)
                        ? __ldg(reinterpret_cast<const float4*>(rows + (r + u) * d) + j)
                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                }
                #pragma unroll
                for (int q = 0; q < SCAN_Q; ++q) {
                    if (q < qn) {
                        const float4 y = __ldg(reinterpret_cast<const float4*>(queries + q * d) + j);
                        #pragma unroll
                        for (int u = 0; u < SCAN_ROWS; ++u) {
                            acc[u][q] = fmaf(x[u].x, y.x, acc[u][q]);
                            acc[u][q] = fmaf(x[u].y, y.y, acc[u][q]);
                            acc[u][q] = fmaf(x[u].z, y.z, acc[u][q]);
                            acc[u][q] = fmaf(x[u].w, y.w, acc[u][q]);
                        }
                    }
                }
            }
        } else {
            for (int j = lane; j < d; j += 32) {
                float x[SCAN_ROWS];
                #pragma unroll
                for (int u = 0; u < SCAN_ROWS; ++u) x[u] = (r + u < len) ? __ldg(rows + (r + u) * d + j) : 0.0f;
                #pragma unroll
                for (int q = 0; q < SCAN_Q; ++q) {
                    if (q < qn) {
                        const float y = __ldg(queries + q * d + j);
                        #pragma unroll
                        for (int u = 0; u < SCAN_ROWS; ++u) acc[u][q] = fmaf(x[u], y, acc[u][q]);
                    }
                }
            }
        }
        #pragma unroll
        for (int u = 0; u < SCAN_ROWS; ++u) {
            #pragma unroll
            for (int q = 0; q < SCAN_Q; ++q) {
                if (q < qn) {
                    float v = acc[u][q];
                    #pragma unroll
                    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
                    if (lane == 0 && r + u < len) scores[q * ld + r + u] = v;
                }
            }
        }
    }
}

extern "C" __global__ void vitrine_topk_merge(
        const float* in_s, const unsigned* in_r, int n_in, long long in_ld,
        const unsigned long long* docs, unsigned cs,
        int k, float* out_s, unsigned* out_r, long long out_ld) {
    __shared__ float s_score[TILE];
    __shared__ unsigned s_row[TILE];
    const int tile = blockIdx.x;
    const long long q = blockIdx.y;
    const int base = tile * TILE;
    int cnt = n_in - base;
    if (cnt > TILE) cnt = TILE;
    for (int p = threadIdx.x; p < cnt; p += THREADS) {
        float s = in_s[q * in_ld + base + p];
        unsigned r = in_r[q * in_ld + base + p];
        s_score[p] = (r == GONE_ROW) ? nan_f() : s;
        s_row[p] = r;
    }
    __syncthreads();
    select_k(s_score, s_row, cnt, k, docs, cs, out_s + q * out_ld + (long long)tile * k,
             out_r + q * out_ld + (long long)tile * k);
}
"#;

/// What the device is and what it can move.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuInfo {
    /// Device name.
    pub name: String,
    /// Compute capability.
    pub compute_capability: (i32, i32),
    /// Total memory in bytes.
    pub total_memory: usize,
    /// Free memory in bytes when the scorer was set up.
    pub free_memory: usize,
    /// Multiprocessors.
    pub multiprocessors: i32,
    /// Theoretical memory bandwidth in bytes/s from the memory clock and bus
    /// width, when the driver reports them.
    pub peak_bandwidth: Option<f64>,
}

struct Chunk {
    start: usize,
    len: usize,
    data: CudaSlice<f32>,
    docs: CudaSlice<u64>,
}

/// Rows on the device: all chunks resident, or a plan to stream them.
pub(crate) struct DeviceRows {
    resident: Vec<Chunk>,
    chunk_rows: usize,
    streamed: bool,
    /// Bytes the scores buffer may take.
    scores_budget: usize,
}

pub(crate) struct GpuScorer {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    first: CudaFunction,
    merge: CudaFunction,
    scan: CudaFunction,
    info: GpuInfo,
    memory_fraction: f64,
    scan_kernel_max_batch: usize,
    /// One call at a time on the stream and cuBLAS handle, and the device
    /// buffers kept between calls.
    lock: Mutex<Scratch>,
}

/// Device buffers reused across calls (grow-only), so that a small query
/// pays for no allocation.
#[derive(Default)]
struct Scratch {
    scores: Option<CudaSlice<f32>>,
    ping_s: Option<CudaSlice<f32>>,
    ping_r: Option<CudaSlice<u32>>,
    pong_s: Option<CudaSlice<f32>>,
    pong_r: Option<CudaSlice<u32>>,
    queries: Option<CudaSlice<f32>>,
    mask: Option<CudaSlice<u32>>,
    stage_data: Option<CudaSlice<f32>>,
    stage_docs: Option<CudaSlice<u64>>,
    /// The last top-k pass's output: score bits then rows, one copy back.
    result: Option<CudaSlice<u32>>,
}

/// `slot`, reallocated when it holds fewer than `len` elements.
fn grown<'s, T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    slot: &'s mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<&'s mut CudaSlice<T>> {
    let len = len.max(1);
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = None;
        *slot = Some(
            stream
                .alloc_zeros::<T>(len)
                .map_err(gpu_err("allocating"))?,
        );
    }
    slot.as_mut()
        .ok_or_else(|| gpu_err("allocating")("scratch buffer missing"))
}

fn gpu_err<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> ScorerError {
    move |e| ScorerError::Gpu {
        op,
        message: e.to_string(),
    }
}

fn unavailable(reason: impl Into<String>) -> ScorerError {
    ScorerError::GpuUnavailable {
        reason: reason.into(),
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl GpuScorer {
    pub(crate) fn new(
        ordinal: usize,
        memory_fraction: f64,
        scan_kernel_max_batch: usize,
    ) -> Result<Self> {
        // SAFETY: these only try to dlopen the libraries.
        let (driver, blas, nvrtc) = unsafe {
            (
                cudarc::driver::sys::is_culib_present(),
                cudarc::cublas::sys::is_culib_present(),
                cudarc::nvrtc::sys::is_culib_present(),
            )
        };
        if !driver {
            return Err(unavailable(
                "the CUDA driver library (libcuda) was not found: no NVIDIA driver on this machine",
            ));
        }
        if !blas {
            return Err(unavailable(
                "libcublas was not found (CUDA toolkit libraries missing from the loader path)",
            ));
        }
        if !nvrtc {
            return Err(unavailable(
                "libnvrtc was not found (CUDA toolkit libraries missing from the loader path)",
            ));
        }
        let r = catch_unwind(AssertUnwindSafe(|| {
            Self::init(ordinal, memory_fraction, scan_kernel_max_batch)
        }));
        let g =
            r.map_err(|p| unavailable(format!("CUDA set-up panicked: {}", panic_message(p))))??;
        tracing::info!(device = %g.info.name, free = g.info.free_memory, "GPU scorer ready");
        Ok(g)
    }

    fn init(ordinal: usize, memory_fraction: f64, scan_kernel_max_batch: usize) -> Result<Self> {
        let count = CudaContext::device_count()
            .map_err(|e| unavailable(format!("CUDA driver failed to initialise: {e}")))?;
        if ordinal as i64 >= count as i64 {
            return Err(unavailable(format!(
                "no CUDA device {ordinal} ({count} present)"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("CUDA device {ordinal}: {e}")))?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| unavailable(format!("cuBLAS handle: {e}")))?;
        let cc = ctx
            .compute_capability()
            .map_err(|e| unavailable(format!("compute capability: {e}")))?;
        let ptx = compile_ptx_with_opts(
            KERNELS,
            CompileOptions {
                options: vec![format!("--gpu-architecture=compute_{}{}", cc.0, cc.1)],
                ..Default::default()
            },
        )
        .map_err(|e| unavailable(format!("NVRTC could not compile the top-k kernels: {e}")))?;
        let module = ctx
            .load_module(ptx)
            .map_err(|e| unavailable(format!("loading the top-k kernels: {e}")))?;
        let first = module
            .load_function("vitrine_topk_first")
            .map_err(|e| unavailable(format!("kernel vitrine_topk_first: {e}")))?;
        let merge = module
            .load_function("vitrine_topk_merge")
            .map_err(|e| unavailable(format!("kernel vitrine_topk_merge: {e}")))?;
        let scan = module
            .load_function("vitrine_scan")
            .map_err(|e| unavailable(format!("kernel vitrine_scan: {e}")))?;
        let (free, total) = ctx
            .mem_get_info()
            .map_err(|e| unavailable(format!("memory info: {e}")))?;
        let attr = |a| ctx.attribute(a).ok();
        let peak = match (
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE),
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH),
        ) {
            // kHz, double data rate, bits → bytes/s.
            (Some(khz), Some(bits)) if khz > 0 && bits > 0 => {
                Some(khz as f64 * 1e3 * 2.0 * bits as f64 / 8.0)
            }
            _ => None,
        };
        let info = GpuInfo {
            name: ctx.name().unwrap_or_else(|_| "unknown".into()),
            compute_capability: cc,
            total_memory: total,
            free_memory: free,
            multiprocessors: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .unwrap_or(0),
            peak_bandwidth: peak,
        };
        Ok(GpuScorer {
            ctx,
            stream,
            blas,
            first,
            merge,
            scan,
            info,
            memory_fraction,
            scan_kernel_max_batch,
            lock: Mutex::new(Scratch::default()),
        })
    }

    pub(crate) fn info(&self) -> &GpuInfo {
        &self.info
    }

    fn budget(&self) -> Result<usize> {
        let (free, _) = self
            .ctx
            .mem_get_info()
            .map_err(gpu_err("querying free memory"))?;
        Ok((free as f64 * self.memory_fraction) as usize)
    }

    /// Uploads the rows when they fit in 55 % of the budget; else plans
    /// streaming chunks of 30 % of it. Scores take up to 25 %.
    pub(crate) fn upload(&self, rows: &Rows<'_>) -> Result<DeviceRows> {
        let r = catch_unwind(AssertUnwindSafe(|| self.upload_inner(rows)));
        r.map_err(|p| ScorerError::Gpu {
            op: "uploading rows",
            message: format!("panic: {}", panic_message(p)),
        })?
    }

    fn upload_inner(&self, rows: &Rows<'_>) -> Result<DeviceRows> {
        let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let budget = self.budget()?;
        let row_bytes = rows.dim() * 4 + 8;
        let n = rows.len();
        let scores_budget = budget / 4;
        let resident_ok = n.saturating_mul(row_bytes) <= budget / 100 * 55;
        let chunk_rows = if resident_ok {
            n.clamp(1, MAX_CHUNK_ROWS)
        } else {
            (budget / 100 * 30 / row_bytes).clamp(TILE, MAX_CHUNK_ROWS)
        };
        let mut out = DeviceRows {
            resident: Vec::new(),
            chunk_rows,
            streamed: !resident_ok,
            scores_budget,
        };
        if resident_ok {
            let mut start = 0;
            while start < n {
                let len = chunk_rows.min(n - start);
                out.resident.push(self.chunk(rows, start, len)?);
                start += len;
            }
            tracing::debug!(
                rows = n,
                chunks = out.resident.len(),
                "rows resident on the GPU"
            );
        } else {
            tracing::info!(
                rows = n,
                chunk_rows,
                budget,
                "rows do not fit in GPU memory; they are streamed in chunks"
            );
        }
        Ok(out)
    }

    fn chunk(&self, rows: &Rows<'_>, start: usize, len: usize) -> Result<Chunk> {
        let d = rows.dim();
        let data = self
            .stream
            .clone_htod(&rows.data()[start * d..(start + len) * d])
            .map_err(gpu_err("uploading rows"))?;
        let docs: Vec<u64> = (start..start + len).map(|i| rows.doc(i)).collect();
        let docs = self
            .stream
            .clone_htod(&docs)
            .map_err(gpu_err("uploading doc ids"))?;
        Ok(Chunk {
            start,
            len,
            data,
            docs,
        })
    }

    pub(crate) fn copy_bandwidth(&self, bytes: usize) -> Result<f64> {
        let r = catch_unwind(AssertUnwindSafe(|| -> Result<f64> {
            let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            let n = (bytes / 4).max(1);
            let src = self
                .stream
                .alloc_zeros::<f32>(n)
                .map_err(gpu_err("allocating"))?;
            let mut dst = self
                .stream
                .alloc_zeros::<f32>(n)
                .map_err(gpu_err("allocating"))?;
            self.stream
                .memcpy_dtod(&src, &mut dst)
                .map_err(gpu_err("copying"))?;
            self.stream
                .synchronize()
                .map_err(gpu_err("synchronising"))?;
            let reps = 5;
            let t = Instant::now();
            for _ in 0..reps {
                self.stream
                    .memcpy_dtod(&src, &mut dst)
                    .map_err(gpu_err("copying"))?;
            }
            self.stream
                .synchronize()
                .map_err(gpu_err("synchronising"))?;
            Ok(2.0 * (n * 4 * reps) as f64 / t.elapsed().as_secs_f64())
        }));
        r.map_err(|p| ScorerError::Gpu {
            op: "measuring bandwidth",
            message: format!("panic: {}", panic_message(p)),
        })?
    }

    pub(crate) fn top_k(&self, dev: &DeviceRows, job: &Job<'_>) -> Result<Vec<Vec<Hit>>> {
        let r = catch_unwind(AssertUnwindSafe(|| self.top_k_inner(dev, job)));
        r.map_err(|p| ScorerError::Gpu {
            op: "top-k",
            message: format!("panic: {}", panic_message(p)),
        })?
    }

    fn top_k_inner(&self, dev: &DeviceRows, job: &Job<'_>) -> Result<Vec<Vec<Hit>>> {
        let mut scratch = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let out = self.run_job(&mut scratch, dev, job);
        // A big batch's scores buffer is not worth keeping between calls.
        if scratch
            .scores
            .as_ref()
            .is_some_and(|b| b.len() * 4 > SCRATCH_KEEP_BYTES)
        {
            scratch.scores = None;
        }
        out
    }

    fn run_job(&self, sc: &mut Scratch, dev: &DeviceRows, job: &Job<'_>) -> Result<Vec<Vec<Hit>>> {
        let n = job.rows.len();
        let d = job.rows.dim();
        let b = job.count;
        let longest_exclusion = job
            .exclude
            .map_or(0, |ex| ex.iter().map(Vec::len).max().unwrap_or(0));
        let k_dev = job.k.saturating_add(longest_exclusion).min(n).max(1);
        if k_dev > TILE / 2 {
            return Err(ScorerError::invalid(
                "k",
                format!(
                    "k plus the longest exclusion list is {k_dev}; the GPU top-k handles up to {}",
                    TILE / 2
                ),
            ));
        }
        let chunk_rows = dev.chunk_rows.min(n);
        let sub = (dev.scores_budget / (chunk_rows * 4)).clamp(1, MAX_SUB_BATCH.min(b));
        let tiles_max = chunk_rows.div_ceil(TILE);
        let ping_len = sub * tiles_max * k_dev;
        let pong_len = sub * (tiles_max * k_dev).div_ceil(TILE).max(1) * k_dev;

        let s = &self.stream;
        let Scratch {
            scores,
            ping_s,
            ping_r,
            pong_s,
            pong_r,
            queries: d_queries,
            mask: d_mask,
            stage_data,
            stage_docs,
            result,
        } = sc;
        let scores = grown(s, scores, sub * chunk_rows)?;
        let ping_s = grown(s, ping_s, ping_len)?;
        let ping_r = grown(s, ping_r, ping_len)?;
        let pong_s = grown(s, pong_s, pong_len)?;
        let pong_r = grown(s, pong_r, pong_len)?;
        let d_queries = grown(s, d_queries, sub * d)?;
        let result = grown(s, result, 2 * sub * k_dev)?;
        let (mut stage_data, mut stage_docs) = if dev.streamed {
            (
                Some(grown(s, stage_data, chunk_rows * d)?),
                Some(grown(s, stage_docs, chunk_rows)?),
            )
        } else {
            (None, None)
        };
        let use_scan = sub <= self.scan_kernel_max_batch;
        // Blocks for the scan: enough warps to fill the device a few times.
        let scan_blocks = (self.info.multiprocessors.max(1) as usize * 8).min(1 << 16);

        // Masks as u32 words over all rows: one shared, or one per query.
        let words = n.div_ceil(32);
        let to_u32 = |m: &RowMask, out: &mut Vec<u32>| {
            for w in m.words() {
                out.push(*w as u32);
                out.push((*w >> 32) as u32);
            }
            out.truncate(out.len() - (2 * m.words().len() - words));
        };
        let per_query = job.allow_each.is_some();
        let has_mask = job.allow.is_some() || per_query;
        let d_mask = grown(
            s,
            d_mask,
            match (has_mask, per_query) {
                (false, _) => 1,
                (true, false) => words,
                (true, true) => sub * words,
            },
        )?;
        if let (Some(m), false) = (job.allow, per_query) {
            let mut host = Vec::with_capacity(words + 1);
            to_u32(m, &mut host);
            s.memcpy_htod(&host, d_mask)
                .map_err(gpu_err("uploading the mask"))?;
        }

        let mut collectors: Vec<Collector> = (0..b).map(|_| Collector::new(job.k)).collect();
        let mut host = vec![0u32; 2 * sub * k_dev];
        let mut q0 = 0;
        while q0 < b {
            let qn = sub.min(b - q0);
            s.memcpy_htod(&job.queries[q0 * d..(q0 + qn) * d], d_queries)
                .map_err(gpu_err("uploading queries"))?;
            if let Some(each) = job.allow_each {
                let mut host = Vec::with_capacity(qn * words + 1);
                for m in &each[q0..q0 + qn] {
                    let m = match job.allow {
                        Some(shared) => m.and(shared),
                        None => m.clone(),
                    };
                    to_u32(&m, &mut host);
                }
                s.memcpy_htod(&host, d_mask)
                    .map_err(gpu_err("uploading masks"))?;
            }
            let mut start = 0;
            let mut resident = dev.resident.iter();
            while start < n {
                let len = chunk_rows.min(n - start);
                let (data, docs) = if dev.streamed {
                    let (sd, sk) = match (stage_data.as_deref_mut(), stage_docs.as_deref_mut()) {
                        (Some(a), Some(b)) => (a, b),
                        _ => return Err(gpu_err("streaming")("no staging buffer")),
                    };
                    s.memcpy_htod(&job.rows.data()[start * d..(start + len) * d], sd)
                        .map_err(gpu_err("streaming rows"))?;
                    let host_docs: Vec<u64> =
                        (start..start + len).map(|i| job.rows.doc(i)).collect();
                    s.memcpy_htod(&host_docs, sk)
                        .map_err(gpu_err("streaming doc ids"))?;
                    (&*sd, &*sk)
                } else {
                    match resident.next() {
                        Some(c) if c.start == start && c.len == len => (&c.data, &c.docs),
                        _ => return Err(gpu_err("top-k")("resident chunks do not match the rows")),
                    }
                };
                if use_scan {
                    // Small batches: one pass over the rows per SCAN_Q queries.
                    let (len_i, d_i, ld) = (len as i32, d as i32, len as i64);
                    let blocks = len.div_ceil(4 * 8).clamp(1, scan_blocks);
                    let mut q = 0;
                    while q < qn {
                        let g = SCAN_Q.min(qn - q);
                        let g_i = g as i32;
                        let qv = d_queries.slice(q * d..(q + g) * d);
                        let mut sv = scores.slice_mut(q * len..(q + g) * len);
                        let cfg = LaunchConfig {
                            grid_dim: (blocks as u32, 1, 1),
                            block_dim: (THREADS, 1, 1),
                            shared_mem_bytes: 0,
                        };
                        let mut launch = s.launch_builder(&self.scan);
                        launch
                            .arg(data)
                            .arg(&len_i)
                            .arg(&d_i)
                            .arg(&qv)
                            .arg(&g_i)
                            .arg(&mut sv)
                            .arg(&ld);
                        // SAFETY: argument order and types match vitrine_scan;
                        // data holds len*d floats, qv g*d, sv g*len.
                        unsafe { launch.launch(cfg) }.map_err(gpu_err("scan kernel"))?;
                        q += g;
                    }
                } else {
                    // scores (len x qn, column-major) = dataᵀ (len x d) · queries (d x qn)
                    let cfg = GemmConfig {
                        transa: cublasOperation_t::CUBLAS_OP_T,
                        transb: cublasOperation_t::CUBLAS_OP_N,
                        m: len as i32,
                        n: qn as i32,
                        k: d as i32,
                        alpha: 1.0f32,
                        lda: d as i32,
                        ldb: d as i32,
                        beta: 0.0f32,
                        ldc: len as i32,
                    };
                    // SAFETY: data holds ≥ len*d floats, d_queries ≥ qn*d, scores ≥ len*qn.
                    unsafe { self.blas.gemm(cfg, data, &*d_queries, &mut *scores) }
                        .map_err(gpu_err("sgemm"))?;
                }

                let tiles = len.div_ceil(TILE);
                let (n_i, ld, cs) = (len as i32, len as i64, start as u32);
                let mask_stride: i64 = if per_query { words as i64 } else { 0 };
                let has_mask_i = has_mask as i32;
                let k_i = k_dev as i32;
                let mut cur_ld = (tiles * k_dev) as i64;
                let cfg = LaunchConfig {
                    grid_dim: (tiles as u32, qn as u32, 1),
                    block_dim: (THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                // The last pass writes into `result` (scores as bits, then
                // rows) so that one copy brings it back.
                let want = qn * k_dev;
                {
                    let (mut res_s, mut res_r) = result.split_at_mut(want);
                    let last = tiles == 1;
                    let mut launch = s.launch_builder(&self.first);
                    launch
                        .arg(&*scores)
                        .arg(&n_i)
                        .arg(&ld)
                        .arg(docs)
                        .arg(&cs)
                        .arg(&*d_mask)
                        .arg(&mask_stride)
                        .arg(&has_mask_i)
                        .arg(&k_i);
                    if last {
                        launch.arg(&mut res_s).arg(&mut res_r);
                    } else {
                        launch.arg(&mut *ping_s).arg(&mut *ping_r);
                    }
                    launch.arg(&cur_ld);
                    // SAFETY: argument order and types match vitrine_topk_first
                    // (`res_s` holds f32 bits); buffers are sized for
                    // `tiles * k_dev` per query.
                    unsafe { launch.launch(cfg) }.map_err(gpu_err("top-k kernel"))?;

                    let mut in_ping = true;
                    let mut cur_n = tiles * k_dev;
                    while cur_n > k_dev {
                        let next_tiles = cur_n.div_ceil(TILE);
                        let next_ld = (next_tiles * k_dev) as i64;
                        let cur_n_i = cur_n as i32;
                        let last = next_tiles == 1;
                        let cfg = LaunchConfig {
                            grid_dim: (next_tiles as u32, qn as u32, 1),
                            block_dim: (THREADS, 1, 1),
                            shared_mem_bytes: 0,
                        };
                        let mut launch = s.launch_builder(&self.merge);
                        let (src_s, src_r, dst_s, dst_r) = if in_ping {
                            (&*ping_s, &*ping_r, &mut *pong_s, &mut *pong_r)
                        } else {
                            (&*pong_s, &*pong_r, &mut *ping_s, &mut *ping_r)
                        };
                        launch
                            .arg(src_s)
                            .arg(src_r)
                            .arg(&cur_n_i)
                            .arg(&cur_ld)
                            .arg(docs)
                            .arg(&cs)
                            .arg(&k_i);
                        if last {
                            launch.arg(&mut res_s).arg(&mut res_r);
                        } else {
                            launch.arg(dst_s).arg(dst_r);
                        }
                        launch.arg(&next_ld);
                        // SAFETY: as above, for vitrine_topk_merge; the output
                        // buffer holds `next_tiles * k_dev` per query (ping is
                        // the larger, pong holds the first merge's output).
                        unsafe { launch.launch(cfg) }.map_err(gpu_err("top-k merge kernel"))?;
                        in_ping = !in_ping;
                        cur_n = next_tiles * k_dev;
                        cur_ld = next_ld;
                    }
                }
                // qn lists of k_dev, contiguous: score bits, then rows.
                s.memcpy_dtoh(&result.slice(..2 * want), &mut host[..2 * want])
                    .map_err(gpu_err("copying results"))?;
                s.synchronize().map_err(gpu_err("synchronising"))?;
                for qi in 0..qn {
                    let q = q0 + qi;
                    for j in 0..k_dev {
                        let r = host[want + qi * k_dev + j];
                        if r == GONE_ROW || r as usize >= n {
                            continue;
                        }
                        let doc = job.rows.doc(r as usize);
                        let score = f32::from_bits(host[qi * k_dev + j]);
                        let excluded = job
                            .exclude
                            .is_some_and(|ex| ex[q].binary_search(&doc).is_ok());
                        if !excluded {
                            collectors[q].push(doc, score);
                        }
                    }
                }
                start += len;
            }
            q0 += qn;
        }
        Ok(collectors.into_iter().map(Collector::into_sorted).collect())
    }
}
