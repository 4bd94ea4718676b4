// C entry points, for ctypes, that launch attention.cu's kernels on the emulator; the head
// size picks the template instantiation the GPU backend would ask for.
#include "cuda_emu.h"
#include KERNEL_SOURCE

template <typename T, int HD>
int forward(unsigned grid, unsigned block, const T* q, const T* k, const T* v, T* out, T* lse, int bh, int seq) {
    return cuda_emu::launch(dim3{grid}, dim3{block}, attention_forward<T, HD>, q, k, v, out, lse, bh, seq,
                            T(1) / std::sqrt(T(HD)));
}

template <typename T, int HD>
int backward(unsigned grid, unsigned block, const T* q, const T* k, const T* v, const T* out, const T* dout,
             const T* lse, T* row_dot, T* dq, T* dk, T* dv, int bh, int seq) {
    const T scale = T(1) / std::sqrt(T(HD));
    return cuda_emu::launch(dim3{grid}, dim3{block}, attention_row_dot<T, HD>, dout, out, row_dot, bh, seq) ||
           cuda_emu::launch(dim3{grid}, dim3{block}, attention_backward_dq<T, HD>, q, k, v, dout, lse, row_dot, dq,
                            bh, seq, scale) ||
           cuda_emu::launch(dim3{grid}, dim3{block}, attention_backward_dkdv<T, HD>, q, k, v, dout, lse, row_dot, dk,
                            dv, bh, seq, scale);
}

template <typename T>
int forward_any(int hd, unsigned grid, unsigned block, const T* q, const T* k, const T* v, T* out, T* lse, int bh,
                int seq) {
    switch (hd) {
        case 32: return forward<T, 32>(grid, block, q, k, v, out, lse, bh, seq);
        case 64: return forward<T, 64>(grid, block, q, k, v, out, lse, bh, seq);
        case 128: return forward<T, 128>(grid, block, q, k, v, out, lse, bh, seq);
    }
    std::fprintf(stderr, "attention harness: no kernel for head size %d\n", hd);
    return 1;
}

template <typename T>
int backward_any(int hd, unsigned grid, unsigned block, const T* q, const T* k, const T* v, const T* out,
                 const T* dout, const T* lse, T* row_dot, T* dq, T* dk, T* dv, int bh, int seq) {
    switch (hd) {
        case 32: return backward<T, 32>(grid, block, q, k, v, out, dout, lse, row_dot, dq, dk, dv, bh, seq);
        case 64: return backward<T, 64>(grid, block, q, k, v, out, dout, lse, row_dot, dq, dk, dv, bh, seq);
        case 128: return backward<T, 128>(grid, block, q, k, v, out, dout, lse, row_dot, dq, dk, dv, bh, seq);
    }
    std::fprintf(stderr, "attention harness: no kernel for head size %d\n", hd);
    return 1;
}

extern "C" {
int forward_f32(unsigned g, unsigned b, const float* q, const float* k, const float* v, float* o, float* lse,
                int bh, int seq, int hd) {
    return forward_any<float>(hd, g, b, q, k, v, o, lse, bh, seq);
}
int forward_f64(unsigned g, unsigned b, const double* q, const double* k, const double* v, double* o, double* lse,
                int bh, int seq, int hd) {
    return forward_any<double>(hd, g, b, q, k, v, o, lse, bh, seq);
}
int backward_f32(unsigned g, unsigned b, const float* q, const float* k, const float* v, const float* o,
                 const float* d_o, const float* lse, float* rd, float* dq, float* dk, float* dv, int bh, int seq,
                 int hd) {
    return backward_any<float>(hd, g, b, q, k, v, o, d_o, lse, rd, dq, dk, dv, bh, seq);
}
int backward_f64(unsigned g, unsigned b, const double* q, const double* k, const double* v, const double* o,
                 const double* d_o, const double* lse, double* rd, double* dq, double* dk, double* dv, int bh,
                 int seq, int hd) {
    return backward_any<double>(hd, g, b, q, k, v, o, d_o, lse, rd, dq, dk, dv, bh, seq);
}
}
