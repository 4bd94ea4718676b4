// Causal multi-head attention, q, k, v, out of shape (B, H, T, HD), one warp per row.
//
// forward:  the warp of query row i walks keys 0..i once with an online softmax (running max m
//           and sum l, the output rescaled whenever m grows), so the (T, T) score matrix is
//           never stored; it writes out[i] and lse[i] = m + log l.
// backward: FlashAttention-2's algorithm: D[i] = dO[i]·O[i]; P[i,j] = exp(q[i]·k[j]·scale - lse[i])
//           rebuilt on the fly; dS = P (dO[i]·v[j] - D[i]). One kernel gives dQ (a warp per
//           query row, over its keys), another dK and dV (a warp per key row, over the queries
//           that see it), so no two warps ever write the same row and no atomics are needed.
// Each lane holds HD / 32 of a row's elements; dot products are summed across the warp with
// shuffles. Launch geometry: engine/kernels/launch.py.

#define WARP 32
#define NEG_INF __longlong_as_double((long long)0xfff0000000000000ULL)  // -inf, bit for bit

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffff, value, offset);
    return value;
}

// The row this warp works on, counted over all B * H * T rows; -1 past the end.
__device__ __forceinline__ long long warp_row(long long rows) {
    long long row = (long long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    return row < rows ? row : -1;
}

template <typename T, int HD>
__global__ void attention_forward(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                  T* __restrict__ out, T* __restrict__ lse, int heads_batch, int seq, T scale) {
    constexpr int E = HD / WARP;
    const long long row = warp_row((long long)heads_batch * seq);
    if (row < 0) return;
    const int lane = threadIdx.x % WARP, i = row % seq;
    const long long base = (row - i) * HD;  // this head's first row
    T q_lane[E], o_lane[E];
    for (int e = 0; e < E; ++e) { q_lane[e] = q[row * HD + lane + e * WARP]; o_lane[e] = 0; }
    T m = NEG_INF, l = 0;
    for (int j = 0; j <= i; ++j) {
        T partial = 0;
        for (int e = 0; e < E; ++e) partial += q_lane[e] * k[base + (long long)j * HD + lane + e * WARP];
        const T s = warp_sum(partial) * scale;
        const T m_new = s > m ? s : m;
        const T rescale = exp(m - m_new), p = exp(s - m_new);
        l = l * rescale + p;
        for (int e = 0; e < E; ++e) o_lane[e] = o_lane[e] * rescale + p * v[base + (long long)j * HD + lane + e * WARP];
        m = m_new;
    }
    for (int e = 0; e < E; ++e) out[row * HD + lane + e * WARP] = o_lane[e] / l;
    if (lane == 0) lse[row] = m + log(l);
}

template <typename T, int HD>
__global__ void attention_row_dot(const T* __restrict__ dout, const T* __restrict__ out, T* __restrict__ row_dot,
                                  int heads_batch, int seq) {
    constexpr int E = HD / WARP;
    const long long row = warp_row((long long)heads_batch * seq);
    if (row < 0) return;
    const int lane = threadIdx.x % WARP;
    T partial = 0;
    for (int e = 0; e < E; ++e) partial += dout[row * HD + lane + e * WARP] * out[row * HD + lane + e * WARP];
    const T total = warp_sum(partial);
    if (lane == 0) row_dot[row] = total;
}

template <typename T, int HD>
__global__ void attention_backward_dq(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                      const T* __restrict__ dout, const T* __restrict__ lse,
                                      const T* __restrict__ row_dot, T* __restrict__ dq, int heads_batch, int seq,
                                      T scale) {
    constexpr int E = HD / WARP;
    const long long row = warp_row((long long)heads_batch * seq);
    if (row < 0) return;
    const int lane = threadIdx.x % WARP, i = row % seq;
    const long long base = (row - i) * HD;
    T q_lane[E], do_lane[E], dq_lane[E];
    for (int e = 0; e < E; ++e) {
        q_lane[e] = q[row * HD + lane + e * WARP];
        do_lane[e] = dout[row * HD + lane + e * WARP];
        dq_lane[e] = 0;
    }
    const T row_lse = lse[row], d = row_dot[row];
    for (int j = 0; j <= i; ++j) {
        T qk = 0, dov = 0;
        for (int e = 0; e < E; ++e) {
            qk += q_lane[e] * k[base + (long long)j * HD + lane + e * WARP];
            dov += do_lane[e] * v[base + (long long)j * HD + lane + e * WARP];
        }
        const T p = exp(warp_sum(qk) * scale - row_lse);
        const T ds = p * (warp_sum(dov) - d) * scale;
        for (int e = 0; e < E; ++e) dq_lane[e] += ds * k[base + (long long)j * HD + lane + e * WARP];
    }
    for (int e = 0; e < E; ++e) dq[row * HD + lane + e * WARP] = dq_lane[e];
}

template <typename T, int HD>
__global__ void attention_backward_dkdv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                        const T* __restrict__ dout, const T* __restrict__ lse,
                                        const T* __restrict__ row_dot, T* __restrict__ dk, T* __restrict__ dv,
                                        int heads_batch, int seq, T scale) {
    constexpr int E = HD / WARP;
    const long long row = warp_row((long long)heads_batch * seq);  // a key row
    if (row < 0) return;
    const int lane = threadIdx.x % WARP, j = row % seq;
    const long long head = row - j;  // this head's first row, as a row index
    T k_lane[E], v_lane[E], dk_lane[E], dv_lane[E];
    for (int e = 0; e < E; ++e) {
        k_lane[e] = k[row * HD + lane + e * WARP];
        v_lane[e] = v[row * HD + lane + e * WARP];
        dk_lane[e] = dv_lane[e] = 0;
    }
    for (int i = j; i < seq; ++i) {
        const long long query = (head + i) * HD;
        T qk = 0, dov = 0;
        for (int e = 0; e < E; ++e) {
            qk += q[query + lane + e * WARP] * k_lane[e];
            dov += dout[query + lane + e * WARP] * v_lane[e];
        }
        const T p = exp(warp_sum(qk) * scale - lse[head + i]);
        const T ds = p * (warp_sum(dov) - row_dot[head + i]) * scale;
        for (int e = 0; e < E; ++e) {
            dv_lane[e] += p * dout[query + lane + e * WARP];
            dk_lane[e] += ds * q[query + lane + e * WARP];
        }
    }
    for (int e = 0; e < E; ++e) {
        dk[row * HD + lane + e * WARP] = dk_lane[e];
        dv[row * HD + lane + e * WARP] = dv_lane[e];
    }
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
