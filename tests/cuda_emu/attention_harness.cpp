// C entry points, for ctypes, that launch attention.cu's kernels on the emulator, one per kernel and type, with
// the geometry the caller passes (launch.attention_geometry); the head size picks the template instantiation
// the GPU backend would ask for, and the scale is 1 / sqrt(HD) as the backend's.
#include <type_traits>

#include "cuda_emu.h"
#include KERNEL_SOURCE

template <typename Launch>
int by_head_size(int hd, Launch launch) {
    switch (hd) {
        case 32: return launch(std::integral_constant<int, 32>{});
        case 64: return launch(std::integral_constant<int, 64>{});
        case 128: return launch(std::integral_constant<int, 128>{});
    }
    std::fprintf(stderr, "attention harness: no kernel for head size %d\n", hd);
    return 1;
}

template <typename T, int HD>
T scale() { return T(1) / std::sqrt(T(HD)); }

template <typename T>
int forward(unsigned grid, unsigned block, const T* q, const T* k, const T* v, T* out, T* lse, int bh, int seq,
            int hd) {
    return by_head_size(hd, [&](auto size) {
        constexpr int HD = decltype(size)::value;
        return cuda_emu::launch(dim3{grid}, dim3{block}, attention_forward<T, HD>, q, k, v, out, lse, bh, seq,
                                scale<T, HD>());
    });
}

template <typename T>
int row_dot(unsigned grid, unsigned block, const T* dout, const T* out, T* dot, int bh, int seq, int hd) {
    return by_head_size(hd, [&](auto size) {
        constexpr int HD = decltype(size)::value;
        return cuda_emu::launch(dim3{grid}, dim3{block}, attention_row_dot<T, HD>, dout, out, dot, bh, seq);
    });
}

template <typename T>
int backward_dq(unsigned grid, unsigned block, const T* q, const T* k, const T* v, const T* dout, const T* lse,
                const T* dot, T* dq, int bh, int seq, int hd) {
    return by_head_size(hd, [&](auto size) {
        constexpr int HD = decltype(size)::value;
        return cuda_emu::launch(dim3{grid}, dim3{block}, attention_backward_dq<T, HD>, q, k, v, dout, lse, dot, dq,
                                bh, seq, scale<T, HD>());
    });
}

template <typename T>
int backward_dkdv(unsigned grid, unsigned block, const T* q, const T* k, const T* v, const T* dout, const T* lse,
                  const T* dot, T* dk, T* dv, int bh, int seq, int hd) {
    return by_head_size(hd, [&](auto size) {
        constexpr int HD = decltype(size)::value;
        return cuda_emu::launch(dim3{grid}, dim3{block}, attention_backward_dkdv<T, HD>, q, k, v, dout, lse, dot,
                                dk, dv, bh, seq, scale<T, HD>());
    });
}

// (own, stream, threads) of a tiled kernel (0 forward, 1 dq, 2 dkdv), so the tests can hold launch.py to them.
template <typename T>
int tiling(int kernel, int hd, int* shape) {
    return by_head_size(hd, [&](auto size) {
        constexpr int HD = decltype(size)::value;
        auto fill = [&](auto tile) {
            using Tile = decltype(tile);
            shape[0] = Tile::OWN, shape[1] = Tile::STREAM, shape[2] = Tile::THREADS;
            return 0;
        };
        switch (kernel) {
            case 0: return fill(ForwardTiling<T, HD>{});
            case 1: return fill(DqTiling<T, HD>{});
            case 2: return fill(DkdvTiling<T, HD>{});
        }
        return 1;
    });
}

extern "C" {
int forward_f32(unsigned g, unsigned b, const float* q, const float* k, const float* v, float* o, float* lse,
                int bh, int seq, int hd) {
    return forward<float>(g, b, q, k, v, o, lse, bh, seq, hd);
}
int forward_f64(unsigned g, unsigned b, const double* q, const double* k, const double* v, double* o, double* lse,
                int bh, int seq, int hd) {
    return forward<double>(g, b, q, k, v, o, lse, bh, seq, hd);
}
int row_dot_f32(unsigned g, unsigned b, const float* d_o, const float* o, float* dot, int bh, int seq, int hd) {
    return row_dot<float>(g, b, d_o, o, dot, bh, seq, hd);
}
int row_dot_f64(unsigned g, unsigned b, const double* d_o, const double* o, double* dot, int bh, int seq, int hd) {
    return row_dot<double>(g, b, d_o, o, dot, bh, seq, hd);
}
int backward_dq_f32(unsigned g, unsigned b, const float* q, const float* k, const float* v, const float* d_o,
                    const float* lse, const float* dot, float* dq, int bh, int seq, int hd) {
    return backward_dq<float>(g, b, q, k, v, d_o, lse, dot, dq, bh, seq, hd);
}
int backward_dq_f64(unsigned g, unsigned b, const double* q, const double* k, const double* v, const double* d_o,
                    const double* lse, const double* dot, double* dq, int bh, int seq, int hd) {
    return backward_dq<double>(g, b, q, k, v, d_o, lse, dot, dq, bh, seq, hd);
}
int backward_dkdv_f32(unsigned g, unsigned b, const float* q, const float* k, const float* v, const float* d_o,
                      const float* lse, const float* dot, float* dk, float* dv, int bh, int seq, int hd) {
    return backward_dkdv<float>(g, b, q, k, v, d_o, lse, dot, dk, dv, bh, seq, hd);
}
int backward_dkdv_f64(unsigned g, unsigned b, const double* q, const double* k, const double* v, const double* d_o,
                      const double* lse, const double* dot, double* dk, double* dv, int bh, int seq, int hd) {
    return backward_dkdv<double>(g, b, q, k, v, d_o, lse, dot, dk, dv, bh, seq, hd);
}
int tiling_f32(int kernel, int hd, int* shape) { return tiling<float>(kernel, hd, shape); }
int tiling_f64(int kernel, int hd, int* shape) { return tiling<double>(kernel, hd, shape); }
}
