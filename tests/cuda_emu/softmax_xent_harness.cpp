// C entry points, for ctypes, that launch softmax_xent.cu's kernels on the emulator.
#include "cuda_emu.h"
#include KERNEL_SOURCE

extern "C" int forward_f32(unsigned grid, unsigned block, const float* x, const long long* t, float* loss,
                           float* lse, int N, int V) {
    return cuda_emu::launch(dim3{grid}, dim3{block}, softmax_xent_forward<float>, x, t, loss, lse, N, V);
}
extern "C" int forward_f64(unsigned grid, unsigned block, const double* x, const long long* t, double* loss,
                           double* lse, int N, int V) {
    return cuda_emu::launch(dim3{grid}, dim3{block}, softmax_xent_forward<double>, x, t, loss, lse, N, V);
}
extern "C" int backward_f32(unsigned grid, unsigned block, const float* x, const float* lse, const long long* t,
                            const float* dloss, float* dx, int N, int V) {
    return cuda_emu::launch(dim3{grid}, dim3{block}, softmax_xent_backward<float>, x, lse, t, dloss, dx, N, V);
}
extern "C" int backward_f64(unsigned grid, unsigned block, const double* x, const double* lse, const long long* t,
                            const double* dloss, double* dx, int N, int V) {
    return cuda_emu::launch(dim3{grid}, dim3{block}, softmax_xent_backward<double>, x, lse, t, dloss, dx, N, V);
}
