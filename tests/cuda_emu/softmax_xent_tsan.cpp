// A standalone run of softmax_xent.cu on the emulator, for ThreadSanitizer (which cannot be
// loaded into Python): forward and backward on one ragged case, checked against plain loops.
#include "cuda_emu.h"
#include KERNEL_SOURCE

int main() {
    const int N = 2, V = 70;
    std::vector<float> x(N * V), grad(N * V), loss(N), lse(N), dloss{0.5f, -1.0f};
    std::vector<long long> target{3, 69};
    for (int i = 0; i < N * V; ++i) x[i] = std::sin(0.37f * i) * 3.0f;
    const dim3 grid{N}, block{96};
    if (cuda_emu::launch(grid, block, softmax_xent_forward<float>, x.data(), target.data(), loss.data(), lse.data(),
                         N, V))
        return 1;
    if (cuda_emu::launch(grid, block, softmax_xent_backward<float>, x.data(), lse.data(), target.data(), dloss.data(),
                            grad.data(), N, V))
        return 1;
    for (int r = 0; r < N; ++r) {
        double total = 0;
        for (int j = 0; j < V; ++j) total += std::exp((double)x[r * V + j]);
        const double expected = std::log(total);
        if (std::fabs(lse[r] - expected) > 1e-4 * std::fabs(expected)) {
            std::fprintf(stderr, "row %d: lse %g, expected %g\n", r, lse[r], expected);
            return 1;
        }
        for (int j = 0; j < V; ++j) {
            const double g = (std::exp(x[r * V + j] - expected) - (j == target[r])) * dloss[r];
            if (std::fabs(grad[r * V + j] - g) > 1e-5) {
                std::fprintf(stderr, "row %d, column %d: gradient %g, expected %g\n", r, j, grad[r * V + j], g);
                return 1;
            }
        }
    }
    std::puts("ok");
    return 0;
}
