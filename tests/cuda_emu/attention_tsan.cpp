// A standalone run of attention.cu on the emulator, for ThreadSanitizer: all four kernels on one ragged case that
// spans several tiles (T = 70, HD = 32, double), launched with the geometry given on the command line (grid and
// block of forward, row_dot, backward_dq, backward_dkdv, from launch.attention_geometry); the forward's output
// is checked against plain loops here, the backward's values by test_cuda_kernels.py against reference.py.
#include "cuda_emu.h"
#include KERNEL_SOURCE

int main(int argc, char** argv) {
    if (argc != 9) {
        std::fprintf(stderr, "usage: %s GRID BLOCK (for each of forward, row_dot, backward_dq, backward_dkdv)\n",
                     argv[0]);
        return 1;
    }
    dim3 grid[4], block[4];
    for (int n = 0; n < 4; ++n) {
        grid[n] = dim3{unsigned(std::atoi(argv[1 + 2 * n]))};
        block[n] = dim3{unsigned(std::atoi(argv[2 + 2 * n]))};
    }
    const int BH = 1, T = 70, HD = 32, n = BH * T * HD;
    std::vector<double> q(n), k(n), v(n), dout(n), out(n), lse(T), row_dot(T), dq(n), dk(n), dv(n);
    for (int i = 0; i < n; ++i) {
        q[i] = std::sin(0.3 * i); k[i] = std::cos(0.7 * i); v[i] = std::sin(1.1 * i + 1); dout[i] = std::cos(0.2 * i);
    }
    const double scale = 1.0 / std::sqrt(double(HD));
    if (cuda_emu::launch(grid[0], block[0], attention_forward<double, HD>, q.data(), k.data(), v.data(), out.data(),
                         lse.data(), BH, T, scale) ||
        cuda_emu::launch(grid[1], block[1], attention_row_dot<double, HD>, dout.data(), out.data(), row_dot.data(), BH,
                         T) ||
        cuda_emu::launch(grid[2], block[2], attention_backward_dq<double, HD>, q.data(), k.data(), v.data(),
                         dout.data(), lse.data(), row_dot.data(), dq.data(), BH, T, scale) ||
        cuda_emu::launch(grid[3], block[3], attention_backward_dkdv<double, HD>, q.data(), k.data(), v.data(),
                         dout.data(), lse.data(), row_dot.data(), dk.data(), dv.data(), BH, T, scale))
        return 1;
    for (int i = 0; i < T; ++i) {  // the forward, by its definition
        std::vector<double> p(i + 1);
        double total = 0;
        for (int j = 0; j <= i; ++j) {
            double s = 0;
            for (int e = 0; e < HD; ++e) s += q[i * HD + e] * k[j * HD + e];
            total += p[j] = std::exp(s * scale);
        }
        for (int e = 0; e < HD; ++e) {
            double o = 0;
            for (int j = 0; j <= i; ++j) o += p[j] / total * v[j * HD + e];
            if (std::fabs(o - out[i * HD + e]) > 1e-12) {
                std::fprintf(stderr, "out[%d][%d] = %g, expected %g\n", i, e, out[i * HD + e], o);
                return 1;
            }
        }
    }
    std::puts("ok");
    return 0;
}
