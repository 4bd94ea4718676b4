// Causal multi-head attention, q, k, v, out of shape (B, H, T, HD): FlashAttention-2 (Dao 2023) on CUDA cores.
//
// forward:  a block owns a tile of query rows and streams the key and value tiles up to the diagonal through
//           shared memory with an online softmax: per row a running max m and sum l, the output accumulator
//           rescaled by exp(m_old - m_new) only when m grows, so the (T, T) scores are never stored; it writes
//           out = acc / l and lse = m + log l.
// backward: D = rowsum(dO ∘ O) (a warp per row), then P = exp(S - lse) is rebuilt tile by tile and
//           dS = P ∘ (dO Vᵀ - D). One kernel owns a tile of key rows and sweeps the query tiles at or after it
//           for dV = Pᵀ dO and dK = dSᵀ Q; another owns a tile of query rows and sweeps the key tiles up to the
//           diagonal for dQ = dS K. Every output row has one owner: no atomics, and the same sums in the same
//           order on every run.
//
// Why tiles: the threads of a block share every row that it loads, and each thread keeps a micro-tile of RO
// owned rows by RS streamed rows in registers, so every 16 bytes of the head dimension cost it RO + RS vector
// loads from shared memory for RO * RS * 16 / sizeof(T) fused multiply-adds, where a warp per row paid a global
// load and a warp-wide shuffle reduction for every single query-key pair. 8 neighbouring lanes share an owned
// row: the forward reduces its max over them with 3 shuffles per key tile, and its sum once, at the end. Scores
// are kept in log2 units (log2 e folded into the scale), since exp2 is the instruction the hardware has.
// The kernels are declared __launch_bounds__(THREADS, 1), which lets ptxas use up to 255 registers: the
// micro-tiles, accumulators and operands loaded ahead take about 130 to 190, and under its default cap some double
// instantiations spilled.
//
// Tiles are powers of two <= 64, fixed at compile time for each kernel, type and head size: the most query-key
// pairs per tile (the work shared by each __syncthreads and each tile load) whose static shared memory fits in
// 48 KB, the larger owned tile on a tie (its rows are read from global memory once). Rows in shared memory are
// padded by 16 bytes so that the 8 different rows that a quarter-warp reads fall in different banks.
// Launch geometry: engine/kernels/launch.py, which computes the same tiles (tests/test_cuda_kernels.py checks).

#define WARP 32
#define ROW_LANES 8                 // lanes sharing an owned row
#define SHARED_BUDGET (48 * 1024)   // the most static shared memory a block may have
#define NEG_INF __longlong_as_double((long long)0xfff0000000000000ULL)  // -inf, bit for bit
#define LOG2E 1.4426950408889634
#define LN2 0.6931471805599453

__device__ __forceinline__ float exp2_of(float x) { return exp2f(x); }
__device__ __forceinline__ double exp2_of(double x) { return exp2(x); }

struct TileShape {
    int own, stream;
};

// Shared memory of a kernel with `row_buffers` HD-wide buffers on each side (owned rows, streamed rows) and
// `score_buffers` (own, stream) buffers of scores.
__host__ __device__ constexpr int tile_bytes(int size, int hd, int row_buffers, int score_buffers, int own,
                                             int stream) {
    const int pad = 16 / size;
    return size * (row_buffers * (own + stream) * (hd + pad) + score_buffers * own * (stream + pad));
}

__host__ __device__ constexpr TileShape pick_tiles(int size, int hd, int row_buffers, int score_buffers) {
    TileShape best{0, 0};
    for (int own = 64; own >= 8; own /= 2)
        for (int stream = own; stream >= 8; stream /= 2)
            if (tile_bytes(size, hd, row_buffers, score_buffers, own, stream) <= SHARED_BUDGET &&
                own * stream > best.own * best.stream)
                best = TileShape{own, stream};
    return best;
}

// A tiled kernel's shapes, and the steps its threads share. Thread t works on the owned rows
// group() + GROUPS * i (i < RO), the streamed rows lane() + ROW_LANES * j (j < RS) and the accumulator
// columns lane() * COLS + c (c < COLS); strided rows keep a warp's reads of neighbouring rows in different banks.
template <typename T, int HD, int ROW_BUFFERS, int SCORE_BUFFERS>
struct Tiling {
    static constexpr int OWN = pick_tiles(sizeof(T), HD, ROW_BUFFERS, SCORE_BUFFERS).own;
    static constexpr int STREAM = pick_tiles(sizeof(T), HD, ROW_BUFFERS, SCORE_BUFFERS).stream;
    static constexpr int RO = OWN >= 16 ? OWN / 16 : 1, GROUPS = OWN / RO, THREADS = GROUPS * ROW_LANES;
    static constexpr int RS = STREAM / ROW_LANES, COLS = HD / ROW_LANES;
    static constexpr int VEC = 16 / sizeof(T), LD = HD + VEC, SCORE_LD = STREAM + VEC;  // 16 bytes of padding
    static_assert(OWN >= 8 && tile_bytes(sizeof(T), HD, ROW_BUFFERS, SCORE_BUFFERS, OWN, STREAM) <= SHARED_BUDGET,
                  "the tiles must fit in the static shared memory budget");
    static_assert(THREADS % WARP == 0, "row maxima are reduced with full-warp shuffles");

    static __device__ __forceinline__ int group() { return threadIdx.x / ROW_LANES; }
    static __device__ __forceinline__ int lane() { return threadIdx.x % ROW_LANES; }

    // Rows [first, first + ROWS) of one head's (seq, HD) matrix, zeros past the end of the sequence: their
    // scores are masked, but 0 times leftover shared memory could be NaN. Each thread copies 16 bytes of a row
    // per pass, in one vector store, at the same columns on every pass.
    template <int ROWS>
    static __device__ __forceinline__ void load(T (*tile)[LD], const T* __restrict__ head, int first, int seq) {
        constexpr int STEP = THREADS * VEC / HD;  // rows per pass
        static_assert(THREADS * VEC % HD == 0 && ROWS % STEP == 0, "every thread copies as many elements");
        const int r0 = threadIdx.x * VEC / HD, d0 = threadIdx.x * VEC % HD;
#pragma unroll
        for (int n = 0; n < ROWS / STEP; ++n) {
            const int r = r0 + n * STEP;
            T chunk[VEC] = {};
            if (first + r < seq) {
#pragma unroll
                for (int u = 0; u < VEC; ++u) chunk[u] = head[(long long)(first + r) * HD + d0 + u];
            }
#pragma unroll
            for (int u = 0; u < VEC; ++u) tile[r][d0 + u] = chunk[u];
        }
    }

    // s[i][j] = owned row i · streamed row j, over the head dimension.
    static __device__ __forceinline__ void scores(T (&s)[RO][RS], const T (*own)[LD], const T (*stream)[LD]) {
#pragma unroll
        for (int i = 0; i < RO; ++i)
#pragma unroll
            for (int j = 0; j < RS; ++j) s[i][j] = 0;
#pragma unroll
        for (int d = 0; d < HD; ++d) {
            T a[RO], b[RS];
#pragma unroll
            for (int i = 0; i < RO; ++i) a[i] = own[group() + GROUPS * i][d];
#pragma unroll
            for (int j = 0; j < RS; ++j) b[j] = stream[lane() + ROW_LANES * j][d];
#pragma unroll
            for (int i = 0; i < RO; ++i)
#pragma unroll
                for (int j = 0; j < RS; ++j) s[i][j] += a[i] * b[j];
        }
    }

    // acc[i][c] += Σ_s p[owned row i][s] · stream[s][this thread's column c].
    static __device__ __forceinline__ void accumulate(T (&acc)[RO][COLS], const T (*p)[SCORE_LD],
                                                      const T (*stream)[LD]) {
#pragma unroll
        for (int s = 0; s < STREAM; ++s) {
            T a[RO], b[COLS];
#pragma unroll
            for (int i = 0; i < RO; ++i) a[i] = p[group() + GROUPS * i][s];
#pragma unroll
            for (int c = 0; c < COLS; ++c) b[c] = stream[s][lane() * COLS + c];
#pragma unroll
            for (int i = 0; i < RO; ++i)
#pragma unroll
                for (int c = 0; c < COLS; ++c) acc[i][c] += a[i] * b[c];
        }
    }

    // factor * acc into the owned rows [first, first + OWN) of one head's (seq, HD) matrix that exist.
    static __device__ __forceinline__ void store(T* __restrict__ head, const T (&acc)[RO][COLS], int first, int seq,
                                                 T factor) {
#pragma unroll
        for (int i = 0; i < RO; ++i) {
            const int row = first + group() + GROUPS * i;
            if (row >= seq) continue;
#pragma unroll
            for (int c = 0; c < COLS; ++c) head[(long long)row * HD + lane() * COLS + c] = acc[i][c] * factor;
        }
    }
};

template <typename T, int HD>
using ForwardTiling = Tiling<T, HD, 1, 1>;  // Q | K, then V | P
template <typename T, int HD>
using DqTiling = Tiling<T, HD, 2, 1>;  // Q, dO | K, V | dS
template <typename T, int HD>
using DkdvTiling = Tiling<T, HD, 2, 2>;  // K, V | Q, dO | P, dS

template <typename T, int HD>
__global__ void __launch_bounds__(ForwardTiling<T, HD>::THREADS, 1)
    attention_forward(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
                      T* __restrict__ lse, int heads_batch, int seq, T scale) {
    using Tile = ForwardTiling<T, HD>;
    constexpr int BM = Tile::OWN, BN = Tile::STREAM, RO = Tile::RO, RS = Tile::RS, COLS = Tile::COLS;
    alignas(16) __shared__ T qs[BM][Tile::LD];
    alignas(16) __shared__ T kv[BN][Tile::LD];  // a key tile, then its value tile
    alignas(16) __shared__ T ps[BM][Tile::SCORE_LD];
    // The last query tiles, which sweep the most key tiles, start first: no long block is left for the end.
    const int head = blockIdx.x % heads_batch, q0 = ((seq + BM - 1) / BM - 1 - blockIdx.x / heads_batch) * BM;
    const long long base = (long long)head * seq * HD;
    const int group = Tile::group(), lane = Tile::lane();
    const T scale_log2 = scale * T(LOG2E);
    Tile::template load<BM>(qs, q + base, q0, seq);
    T acc[RO][COLS] = {}, m[RO], l[RO] = {};
    for (int i = 0; i < RO; ++i) m[i] = NEG_INF;
    const int key_end = min(q0 + BM, seq);
    for (int k0 = 0; k0 < key_end; k0 += BN) {
        Tile::template load<BN>(kv, k + base, k0, seq);
        __syncthreads();
        T s[RO][RS];
        Tile::scores(s, qs, kv);
        const bool diagonal = k0 + BN - 1 > q0;  // only here can a key come after a query
#pragma unroll
        for (int i = 0; i < RO; ++i) {
            const int query = q0 + group + Tile::GROUPS * i;
            T top = m[i];
#pragma unroll
            for (int j = 0; j < RS; ++j) {
                s[i][j] = diagonal && k0 + lane + ROW_LANES * j > query ? T(NEG_INF) : s[i][j] * scale_log2;
                top = s[i][j] > top ? s[i][j] : top;
            }
#pragma unroll
            for (int offset = ROW_LANES / 2; offset > 0; offset /= 2) {
                const T other = __shfl_xor_sync(0xffffffff, top, offset);
                top = other > top ? other : top;
            }
            if (top != m[i]) {  // m = -inf only before the first tile (which holds key 0), where exp2 gives 0
                const T rescale = exp2_of(m[i] - top);
                l[i] *= rescale;
#pragma unroll
                for (int c = 0; c < COLS; ++c) acc[i][c] *= rescale;
                m[i] = top;
            }
#pragma unroll
            for (int j = 0; j < RS; ++j) {
                const T p = exp2_of(s[i][j] - top);
                l[i] += p;
                ps[group + Tile::GROUPS * i][lane + ROW_LANES * j] = p;
            }
        }
        __syncthreads();  // every thread is done with the keys
        Tile::template load<BN>(kv, v + base, k0, seq);
        __syncthreads();
        Tile::accumulate(acc, ps, kv);
        __syncthreads();  // every thread is done with the values and P
    }
#pragma unroll
    for (int i = 0; i < RO; ++i) {
        for (int offset = ROW_LANES / 2; offset > 0; offset /= 2) l[i] += __shfl_xor_sync(0xffffffff, l[i], offset);
        const T inverse = T(1) / l[i];
#pragma unroll
        for (int c = 0; c < COLS; ++c) acc[i][c] *= inverse;
        const int row = q0 + group + Tile::GROUPS * i;
        if (lane == 0 && row < seq) lse[(long long)head * seq + row] = T(LN2) * m[i] + log(l[i]);
    }
    Tile::store(out + base, acc, q0, seq, T(1));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffff, value, offset);
    return value;
}

// D = rowsum(dO ∘ O), a warp per row of all B * H * T rows, each lane holding HD / 32 of its elements.
template <typename T, int HD>
__global__ void attention_row_dot(const T* __restrict__ dout, const T* __restrict__ out, T* __restrict__ row_dot,
                                  int heads_batch, int seq) {
    constexpr int E = HD / WARP;
    const long long row = (long long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= (long long)heads_batch * seq) return;
    const int lane = threadIdx.x % WARP;
    T partial = 0;
    for (int e = 0; e < E; ++e) partial += dout[row * HD + lane + e * WARP] * out[row * HD + lane + e * WARP];
    const T total = warp_sum(partial);
    if (lane == 0) row_dot[row] = total;
}

template <typename T, int HD>
__global__ void __launch_bounds__(DqTiling<T, HD>::THREADS, 1)
    attention_backward_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                          const T* __restrict__ dout, const T* __restrict__ lse, const T* __restrict__ row_dot,
                          T* __restrict__ dq, int heads_batch, int seq, T scale) {
    using Tile = DqTiling<T, HD>;
    constexpr int BM = Tile::OWN, BN = Tile::STREAM, RO = Tile::RO, RS = Tile::RS, COLS = Tile::COLS;
    alignas(16) __shared__ T qs[BM][Tile::LD];
    alignas(16) __shared__ T dos[BM][Tile::LD];
    alignas(16) __shared__ T ks[BN][Tile::LD];
    alignas(16) __shared__ T vs[BN][Tile::LD];
    alignas(16) __shared__ T ds[BM][Tile::SCORE_LD];
    const int head = blockIdx.x % heads_batch, q0 = ((seq + BM - 1) / BM - 1 - blockIdx.x / heads_batch) * BM;
    const long long base = (long long)head * seq * HD;
    const int group = Tile::group(), lane = Tile::lane();
    const T scale_log2 = scale * T(LOG2E);
    Tile::template load<BM>(qs, q + base, q0, seq);
    Tile::template load<BM>(dos, dout + base, q0, seq);
    T lse_log2[RO], d[RO], acc[RO][COLS] = {};
#pragma unroll
    for (int i = 0; i < RO; ++i) {
        const int row = q0 + group + Tile::GROUPS * i;
        lse_log2[i] = row < seq ? lse[(long long)head * seq + row] * T(LOG2E) : T(0);
        d[i] = row < seq ? row_dot[(long long)head * seq + row] : T(0);
    }
    const int key_end = min(q0 + BM, seq);
    for (int k0 = 0; k0 < key_end; k0 += BN) {
        Tile::template load<BN>(ks, k + base, k0, seq);
        Tile::template load<BN>(vs, v + base, k0, seq);
        __syncthreads();
        T s[RO][RS], dp[RO][RS];
        Tile::scores(s, qs, ks);
        Tile::scores(dp, dos, vs);
        const bool diagonal = k0 + BN - 1 > q0;
#pragma unroll
        for (int i = 0; i < RO; ++i) {
            const int query = q0 + group + Tile::GROUPS * i;
#pragma unroll
            for (int j = 0; j < RS; ++j) {
                const T p = diagonal && k0 + lane + ROW_LANES * j > query ? T(0)
                                                                          : exp2_of(s[i][j] * scale_log2 - lse_log2[i]);
                ds[group + Tile::GROUPS * i][lane + ROW_LANES * j] = p * (dp[i][j] - d[i]);
            }
        }
        __syncthreads();
        Tile::accumulate(acc, ds, ks);
        __syncthreads();  // every thread is done with this key tile and dS
    }
    Tile::store(dq + base, acc, q0, seq, scale);
}

template <typename T, int HD>
__global__ void __launch_bounds__(DkdvTiling<T, HD>::THREADS, 1)
    attention_backward_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            const T* __restrict__ dout, const T* __restrict__ lse, const T* __restrict__ row_dot,
                            T* __restrict__ dk, T* __restrict__ dv, int heads_batch, int seq, T scale) {
    using Tile = DkdvTiling<T, HD>;
    constexpr int BN = Tile::OWN, BM = Tile::STREAM, RO = Tile::RO, RS = Tile::RS, COLS = Tile::COLS;
    alignas(16) __shared__ T ks[BN][Tile::LD];
    alignas(16) __shared__ T vs[BN][Tile::LD];
    alignas(16) __shared__ T qs[BM][Tile::LD];
    alignas(16) __shared__ T dos[BM][Tile::LD];
    alignas(16) __shared__ T ps[BN][Tile::SCORE_LD];  // Pᵀ
    alignas(16) __shared__ T ds[BN][Tile::SCORE_LD];  // dSᵀ
    // The first key tiles, which the most query tiles see, start first.
    const int head = blockIdx.x % heads_batch, k0 = blockIdx.x / heads_batch * BN;
    const long long base = (long long)head * seq * HD;
    const int group = Tile::group(), lane = Tile::lane();
    const T scale_log2 = scale * T(LOG2E);
    Tile::template load<BN>(ks, k + base, k0, seq);
    Tile::template load<BN>(vs, v + base, k0, seq);
    T dk_acc[RO][COLS] = {}, dv_acc[RO][COLS] = {};
    for (int q0 = k0 / BM * BM; q0 < seq; q0 += BM) {
        Tile::template load<BM>(qs, q + base, q0, seq);
        Tile::template load<BM>(dos, dout + base, q0, seq);
        T lse_log2[RS], d[RS];  // rows past the end hold zeros: their P is 1, but dO and Q are 0 there
#pragma unroll
        for (int j = 0; j < RS; ++j) {
            const int row = q0 + lane + ROW_LANES * j;
            lse_log2[j] = row < seq ? lse[(long long)head * seq + row] * T(LOG2E) : T(0);
            d[j] = row < seq ? row_dot[(long long)head * seq + row] : T(0);
        }
        __syncthreads();
        T s[RO][RS], dp[RO][RS];
        Tile::scores(s, ks, qs);
        Tile::scores(dp, vs, dos);
        const bool diagonal = q0 < k0 + BN - 1;  // only here can a query come before a key
#pragma unroll
        for (int i = 0; i < RO; ++i) {
            const int key = k0 + group + Tile::GROUPS * i;
#pragma unroll
            for (int j = 0; j < RS; ++j) {
                const T p = diagonal && q0 + lane + ROW_LANES * j < key ? T(0)
                                                                        : exp2_of(s[i][j] * scale_log2 - lse_log2[j]);
                ps[group + Tile::GROUPS * i][lane + ROW_LANES * j] = p;
                ds[group + Tile::GROUPS * i][lane + ROW_LANES * j] = p * (dp[i][j] - d[j]);
            }
        }
        __syncthreads();
        Tile::accumulate(dv_acc, ps, dos);
        Tile::accumulate(dk_acc, ds, qs);
        __syncthreads();  // every thread is done with this query tile, P and dS
    }
    Tile::store(dk + base, dk_acc, k0, seq, scale);
    Tile::store(dv + base, dv_acc, k0, seq, T(1));
}

#define INSTANTIATE(T, HD)                                                                                        \
    template __global__ void attention_forward<T, HD>(const T*, const T*, const T*, T*, T*, int, int, T);       \
    template __global__ void attention_row_dot<T, HD>(const T*, const T*, T*, int, int);                         \
    template __global__ void attention_backward_dq<T, HD>(const T*, const T*, const T*, const T*, const T*,      \
                                                          const T*, T*, int, int, T);                            \
    template __global__ void attention_backward_dkdv<T, HD>(const T*, const T*, const T*, const T*, const T*,    \
                                                            const T*, T*, T*, int, int, T);
INSTANTIATE(float, 32)
INSTANTIATE(float, 64)
INSTANTIATE(float, 128)
INSTANTIATE(double, 32)
INSTANTIATE(double, 64)
INSTANTIATE(double, 128)
