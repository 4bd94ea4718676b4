// LayerNorm over the last axis of x (N rows of d): y = x̂ · w + b, x̂ = (x - mean) · rstd, rstd = 1/√(var + eps).
//
// forward:  a warp per row. The mean first, then the mean of (x - mean)², two passes rather than
//           E[x²] - mean², which cancels catastrophically when |mean| ≫ std; the second and third
//           reads of the row (variance, then y) hit in cache, so DRAM sees x once.
// backward: with g = dy · w,
//             dx = rstd · (g - mean(g) - x̂ · mean(g · x̂)),   dw = Σ_rows dy · x̂,   db = Σ_rows dy.
//           dx needs two sums along its row: a warp per row again, summed with shuffles. dw and db
//           are sums down the columns, over every row, which warps working on rows could only share
//           through atomics, whose order (so whose rounding) changes from run to run, or by staging
//           rows in shared memory. But they need nothing dx computes (mean and rstd are inputs), so
//           the block's threads take the columns instead: thread t owns columns t, t + blockDim, ...
//           and adds each round's rows into its block's partial row, in the scratch buffers
//           dw_partials and db_partials (gridDim × d each). No two threads touch one element, so
//           there are no atomics and no __syncthreads, and the sums come out the same bit for bit on
//           every run; the caller (engine/kernels/gpu.py) sums the partial rows, one small reduction
//           (gridDim is at most ⌈N / warps per block⌉). The rows a round sums were read moments
//           before by the block's warps, so the column pass reads them from cache.
//
// Both kernels walk the rows in rounds of one row per warp, blocks striding over the rows, so any
// N runs on the capped grid of engine/kernels/launch.py (blocks of whole warps); any d >= 1 works.

#define WARP 32

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffff, value, offset);
    return value;
}

template <typename T>
__global__ void layernorm_forward(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                  T* __restrict__ y, T* __restrict__ mean, T* __restrict__ rstd, int N, int d,
                                  T eps) {
    const int lane = threadIdx.x % WARP, warps = blockDim.x / WARP;
    const long long stride = (long long)gridDim.x * warps;
    for (long long row = (long long)blockIdx.x * warps + threadIdx.x / WARP; row < N; row += stride) {
        const T* x_row = x + row * d;
        T sum = 0;
        for (int j = lane; j < d; j += WARP) sum += x_row[j];
        const T m = warp_sum(sum) / T(d);
        T squares = 0;
        for (int j = lane; j < d; j += WARP) {
            const T centered = x_row[j] - m;
            squares += centered * centered;
        }
        const T r = T(1) / sqrt(warp_sum(squares) / T(d) + eps);
        T* y_row = y + row * d;
        for (int j = lane; j < d; j += WARP) y_row[j] = (x_row[j] - m) * r * w[j] + b[j];
        if (lane == 0) {
            mean[row] = m;
            rstd[row] = r;
        }
    }
}

template <typename T>
__global__ void layernorm_backward(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ mean,
                                   const T* __restrict__ rstd, const T* __restrict__ w, T* __restrict__ dx,
                                   T* __restrict__ dw_partials, T* __restrict__ db_partials, int N, int d) {
    const int lane = threadIdx.x % WARP, warps = blockDim.x / WARP;
    T* dw_block = dw_partials + (long long)blockIdx.x * d;
    T* db_block = db_partials + (long long)blockIdx.x * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        dw_block[j] = 0;
        db_block[j] = 0;
    }
    const long long stride = (long long)gridDim.x * warps;
    for (long long first = (long long)blockIdx.x * warps; first < N; first += stride) {
        const long long row = first + threadIdx.x / WARP;
        if (row < N) {
            const T* dy_row = dy + row * d;
            const T* x_row = x + row * d;
            const T m = mean[row], r = rstd[row];
            T g_sum = 0, gx_sum = 0;
            for (int j = lane; j < d; j += WARP) {
                const T g = dy_row[j] * w[j];
                g_sum += g;
                gx_sum += g * (x_row[j] - m) * r;
            }
            const T g_mean = warp_sum(g_sum) / T(d), gx_mean = warp_sum(gx_sum) / T(d);
            T* dx_row = dx + row * d;
            for (int j = lane; j < d; j += WARP) {
                dx_row[j] = r * (dy_row[j] * w[j] - g_mean - (x_row[j] - m) * r * gx_mean);
            }
        }
        const long long last = first + warps < N ? first + warps : N;
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            T dw_sum = dw_block[j], db_sum = db_block[j];
            for (long long n = first; n < last; ++n) {
                const T g = dy[n * d + j];
                dw_sum += g * (x[n * d + j] - mean[n]) * rstd[n];
                db_sum += g;
            }
            dw_block[j] = dw_sum;
            db_block[j] = db_sum;
        }
    }
}

template __global__ void layernorm_forward<float>(const float*, const float*, const float*, float*, float*, float*,
                                                  int, int, float);
template __global__ void layernorm_forward<double>(const double*, const double*, const double*, double*, double*,
                                                   double*, int, int, double);
template __global__ void layernorm_backward<float>(const float*, const float*, const float*, const float*,
                                                   const float*, float*, float*, float*, int, int);
template __global__ void layernorm_backward<double>(const double*, const double*, const double*, const double*,
                                                    const double*, double*, double*, double*, int, int);
