// A standalone run of gelu.cu on the emulator, for ThreadSanitizer: forward and backward over a
// ragged n on a grid too small to cover it in one sweep, checked against the formulas.
#include "cuda_emu.h"
#include KERNEL_SOURCE

int main() {
    const int n = 333;
    std::vector<float> x(n), dy(n), y(n), dx(n);
    for (int i = 0; i < n; ++i) { x[i] = 4 * std::sin(0.37f * i); dy[i] = std::cos(0.23f * i); }
    const dim3 grid{2}, block{64};
    if (cuda_emu::launch(grid, block, gelu_forward<float>, x.data(), y.data(), (long long)n) ||
        cuda_emu::launch(grid, block, gelu_backward<float>, dy.data(), x.data(), dx.data(), (long long)n))
        return 1;
    const double scale = std::sqrt(2 / M_PI), cubic = 0.044715;
    for (int i = 0; i < n; ++i) {
        const double v = x[i], t = std::tanh(scale * (v + cubic * v * v * v));
        const double expected_y = 0.5 * v * (1 + t);
        const double expected_dx = dy[i] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * scale * (1 + 3 * cubic * v * v));
        if (std::fabs(y[i] - expected_y) > 1e-5 || std::fabs(dx[i] - expected_dx) > 1e-5) {
            std::fprintf(stderr, "%d: y %g (expected %g), dx %g (expected %g)\n", i, y[i], expected_y, dx[i],
                         expected_dx);
            return 1;
        }
    }
    std::puts("ok");
    return 0;
}
