// GELU, GPT-2's tanh approximation, elementwise over n values:
//   forward:  y  = ½ x (1 + tanh u),   u = √(2/π) (x + 0.044715 x³)
//   backward: dx = dy · (½ (1 + tanh u) + ½ x (1 - tanh² u) · √(2/π) (1 + 3 · 0.044715 x²))
// term for term as engine/kernels/reference.py writes them (the spec); backward recomputes tanh u
// from x, as a tanh costs less than writing it in the forward and reading it back.
//
// A grid-stride loop with 64-bit indices: an MLP activation (B, T, 4d) can pass 2^31 values, and
// the grid engine/kernels/launch.py picks is capped, each thread taking every (grid × block)-th value.

#define GELU_SCALE 0.7978845608028654  // √(2/π), as reference.GELU_SCALE
#define GELU_CUBIC 0.044715

template <typename T>
__device__ __forceinline__ T gelu_tanh_u(T x) {
    return tanh(T(GELU_SCALE) * (x + T(GELU_CUBIC) * x * x * x));
}

template <typename T>
__global__ void gelu_forward(const T* __restrict__ x, T* __restrict__ y, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T v = x[i];
        y[i] = T(0.5) * v * (T(1) + gelu_tanh_u(v));
    }
}

template <typename T>
__global__ void gelu_backward(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T v = x[i], t = gelu_tanh_u(v);
        const T du_dx = T(GELU_SCALE) * (T(1) + T(3 * GELU_CUBIC) * v * v);
        dx[i] = dy[i] * (T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * du_dx);
    }
}

template __global__ void gelu_forward<float>(const float*, float*, long long);
template __global__ void gelu_forward<double>(const double*, double*, long long);
template __global__ void gelu_backward<float>(const float*, const float*, float*, long long);
template __global__ void gelu_backward<double>(const double*, const double*, double*, long long);
