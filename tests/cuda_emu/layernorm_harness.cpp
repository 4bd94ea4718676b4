// C entry points, for ctypes, that launch layernorm.cu's kernels on the emulator.
#include "cuda_emu.h"
#include KERNEL_SOURCE

template <typename T>
int forward(unsigned grid, unsigned block, const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int N, int d,
            double eps) {
    return cuda_emu::launch(dim3{grid}, dim3{block}, layernorm_forward<T>, x, w, b, y, mean, rstd, N, d, T(eps));
}

template <typename T>
int backward(unsigned grid, unsigned block, const T* dy, const T* x, const T* mean, const T* rstd, const T* w, T* dx,
             T* dw_partials, T* db_partials, int N, int d) {
    return cuda_emu::launch(dim3{grid}, dim3{block}, layernorm_backward<T>, dy, x, mean, rstd, w, dx, dw_partials,
                            db_partials, N, d);
}

extern "C" int forward_f32(unsigned grid, unsigned block, const float* x, const float* w, const float* b, float* y,
                           float* mean, float* rstd, int N, int d, double eps) {
    return forward(grid, block, x, w, b, y, mean, rstd, N, d, eps);
}
extern "C" int forward_f64(unsigned grid, unsigned block, const double* x, const double* w, const double* b,
                           double* y, double* mean, double* rstd, int N, int d, double eps) {
    return forward(grid, block, x, w, b, y, mean, rstd, N, d, eps);
}
extern "C" int backward_f32(unsigned grid, unsigned block, const float* dy, const float* x, const float* mean,
                            const float* rstd, const float* w, float* dx, float* dw_partials, float* db_partials,
                            int N, int d) {
    return backward(grid, block, dy, x, mean, rstd, w, dx, dw_partials, db_partials, N, d);
}
extern "C" int backward_f64(unsigned grid, unsigned block, const double* dy, const double* x, const double* mean,
                            const double* rstd, const double* w, double* dx, double* dw_partials,
                            double* db_partials, int N, int d) {
    return backward(grid, block, dy, x, mean, rstd, w, dx, dw_partials, db_partials, N, d);
}
