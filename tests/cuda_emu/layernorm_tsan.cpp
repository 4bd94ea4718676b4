// A standalone run of layernorm.cu on the emulator, for ThreadSanitizer: forward and backward on
// one ragged case (7 rows of 70 over 2 blocks of 2 warps, so each block takes two rounds and the
// column pass gives some threads two columns), checked against plain loops.
#include "cuda_emu.h"
#include KERNEL_SOURCE

static bool close(double got, double expected, const char* name, int i) {
    if (std::fabs(got - expected) <= 1e-12 * (1 + std::fabs(expected))) return true;
    std::fprintf(stderr, "%s[%d]: %.17g, expected %.17g\n", name, i, got, expected);
    return false;
}

int main() {
    const int N = 7, d = 70, blocks = 2;
    const double eps = 1e-5;
    std::vector<double> x(N * d), dy(N * d), w(d), b(d), y(N * d), mean(N), rstd(N), dx(N * d);
    std::vector<double> dw_partials(blocks * d), db_partials(blocks * d);
    for (int i = 0; i < N * d; ++i) { x[i] = 3 * std::sin(0.37 * i) + 1; dy[i] = std::cos(0.23 * i); }
    for (int j = 0; j < d; ++j) { w[j] = 1 + 0.5 * std::sin(0.9 * j); b[j] = std::cos(0.4 * j); }
    const dim3 grid{blocks}, block{64};
    if (cuda_emu::launch(grid, block, layernorm_forward<double>, x.data(), w.data(), b.data(), y.data(), mean.data(),
                         rstd.data(), N, d, eps) ||
        cuda_emu::launch(grid, block, layernorm_backward<double>, dy.data(), x.data(), mean.data(), rstd.data(),
                         w.data(), dx.data(), dw_partials.data(), db_partials.data(), N, d))
        return 1;
    std::vector<double> dw(d, 0.0), db(d, 0.0);
    for (int n = 0; n < N; ++n) {
        double sum = 0, squares = 0, g_sum = 0, gx_sum = 0;
        for (int j = 0; j < d; ++j) sum += x[n * d + j];
        const double m = sum / d;
        for (int j = 0; j < d; ++j) squares += (x[n * d + j] - m) * (x[n * d + j] - m);
        const double r = 1 / std::sqrt(squares / d + eps);
        if (!close(mean[n], m, "mean", n) || !close(rstd[n], r, "rstd", n)) return 1;
        for (int j = 0; j < d; ++j) {
            const double xhat = (x[n * d + j] - m) * r, g = dy[n * d + j] * w[j];
            if (!close(y[n * d + j], xhat * w[j] + b[j], "y", n * d + j)) return 1;
            g_sum += g;
            gx_sum += g * xhat;
            dw[j] += dy[n * d + j] * xhat;
            db[j] += dy[n * d + j];
        }
        for (int j = 0; j < d; ++j) {
            const double xhat = (x[n * d + j] - m) * r;
            const double expected = r * (dy[n * d + j] * w[j] - g_sum / d - xhat * gx_sum / d);
            if (!close(dx[n * d + j], expected, "dx", n * d + j)) return 1;
        }
    }
    for (int j = 0; j < d; ++j) {
        if (!close(dw_partials[j] + dw_partials[d + j], dw[j], "dw", j) ||
            !close(db_partials[j] + db_partials[d + j], db[j], "db", j))
            return 1;
    }
    std::puts("ok");
    return 0;
}
