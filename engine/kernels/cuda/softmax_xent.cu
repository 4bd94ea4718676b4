// Fused softmax + cross-entropy, one block per row of logits (N rows of V).
//
// forward:  one pass over the row keeps a running (max, sum of exp(x - max)) per thread,
//           merged across the block; loss = lse - x[target], lse = max + log(sum).
// backward: dlogits = dloss * (softmax - onehot(target)), rebuilt from the logits and the
//           stored lse in one pass: no probabilities tensor is ever written.
//
// Launch geometry: engine/kernels/launch.py (grid = N blocks, block = a multiple of 32).

#define WARP 32
#define NEG_INF __longlong_as_double((long long)0xfff0000000000000ULL)  // -inf, bit for bit

// (m, s) stands for s * exp(m): merging two such sums rescales to the larger max.
template <typename T>
__device__ __forceinline__ void merge_max_sum(T& m, T& s, T other_m, T other_s) {
    T top = m > other_m ? m : other_m;
    if (top == NEG_INF) return;  // both empty: nothing to rescale
    s = s * exp(m - top) + other_s * exp(other_m - top);
    m = top;
}

template <typename T>
__device__ void block_max_sum(T& m, T& s) {
    __shared__ T warp_m[WARP];
    __shared__ T warp_s[WARP];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        T other_m = __shfl_xor_sync(0xffffffff, m, offset);
        T other_s = __shfl_xor_sync(0xffffffff, s, offset);
        merge_max_sum(m, s, other_m, other_s);
    }
    if (lane == 0) { warp_m[warp] = m; warp_s[warp] = s; }
    __syncthreads();
    const int n_warps = blockDim.x / WARP;
    m = lane < n_warps ? warp_m[lane] : T(NEG_INF);
    s = lane < n_warps ? warp_s[lane] : T(0);
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        T other_m = __shfl_xor_sync(0xffffffff, m, offset);
        T other_s = __shfl_xor_sync(0xffffffff, s, offset);
        merge_max_sum(m, s, other_m, other_s);
    }
}

template <typename T>
__global__ void softmax_xent_forward(const T* __restrict__ logits, const long long* __restrict__ targets,
                                     T* __restrict__ losses, T* __restrict__ lse, int N, int V) {
    const int row = blockIdx.x;
    const T* x = logits + (long long)row * V;
    T m = NEG_INF, s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        T v = x[j];
        if (v > m) { s = s * exp(m - v) + T(1); m = v; }
        else { s += exp(v - m); }
    }
    block_max_sum(m, s);
    if (threadIdx.x == 0) {
        T row_lse = m + log(s);
        lse[row] = row_lse;
        losses[row] = row_lse - x[targets[row]];
    }
}

template <typename T>
__global__ void softmax_xent_backward(const T* __restrict__ logits, const T* __restrict__ lse,
                                      const long long* __restrict__ targets, const T* __restrict__ dlosses,
                                      T* __restrict__ dlogits, int N, int V) {
    const int row = blockIdx.x;
    const T* x = logits + (long long)row * V;
    T* dx = dlogits + (long long)row * V;
    const T row_lse = lse[row], dloss = dlosses[row];
    const long long target = targets[row];
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        dx[j] = (exp(x[j] - row_lse) - (j == target ? T(1) : T(0))) * dloss;
    }
}

template __global__ void softmax_xent_forward<float>(const float*, const long long*, float*, float*, int, int);
template __global__ void softmax_xent_forward<double>(const double*, const long long*, double*, double*, int, int);
template __global__ void softmax_xent_backward<float>(const float*, const float*, const long long*, const float*,
                                                      float*, int, int);
template __global__ void softmax_xent_backward<double>(const double*, const double*, const long long*,
                                                       const double*, double*, int, int);
