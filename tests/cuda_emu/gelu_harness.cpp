// C entry points, for ctypes, that launch gelu.cu's kernels on the emulator.
#include "cuda_emu.h"
#include KERNEL_SOURCE

extern "C" int forward_f32(unsigned grid, unsigned block, const float* x, float* y, int n) {
    return cuda_emu::launch(dim3{grid}, dim3{block}, gelu_forward<float>, x, y, (long long)n);
}
extern "C" int forward_f64(unsigned grid, unsigned block, const double* x, double* y, int n) {
    return cuda_emu::launch(dim3{grid}, dim3{block}, gelu_forward<double>, x, y, (long long)n);
}
extern "C" int backward_f32(unsigned grid, unsigned block, const float* dy, const float* x, float* dx, int n) {
    return cuda_emu::launch(dim3{grid}, dim3{block}, gelu_backward<float>, dy, x, dx, (long long)n);
}
extern "C" int backward_f64(unsigned grid, unsigned block, const double* dy, const double* x, double* dx, int n) {
    return cuda_emu::launch(dim3{grid}, dim3{block}, gelu_backward<double>, dy, x, dx, (long long)n);
}
