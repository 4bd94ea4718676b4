// A CUDA runtime, small enough to read, that runs unchanged .cu kernels on the CPU: one
// std::thread per CUDA thread, blocks one after another, __syncthreads as a barrier,
// __shared__ as static storage (shared by the block that is running), warp shuffles through
// a per-warp exchange, and a timeout that turns any deadlock into a failure.
#pragma once
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

using std::exp;
using std::log;
using std::sqrt;
using std::tanh;
using std::min;  // CUDA's min(int, int)

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace cuda_emu {

constexpr int WARP_SIZE = 32;
inline std::chrono::milliseconds timeout{5000};

struct Deadlock : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A reusable barrier whose waits give up after `timeout`, and which threads that have
// returned leave (as on hardware, an exited thread no longer holds __syncthreads up).
class Barrier {
  public:
    explicit Barrier(int count) : expected_(count) {}
    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        const long generation = generation_;
        if (++arrived_ == expected_) {
            next_generation();
            return;
        }
        if (!cv_.wait_for(lock, timeout, [&] { return generation_ != generation; }))
            throw Deadlock("barrier wait timed out: not every thread reached it");
    }
    void arrive_and_drop() {
        std::unique_lock<std::mutex> lock(mutex_);
        --expected_;
        if (arrived_ > 0 && arrived_ == expected_) next_generation();
    }

  private:
    void next_generation() {
        arrived_ = 0;
        ++generation_;
        cv_.notify_all();
    }
    std::mutex mutex_;
    std::condition_variable cv_;
    int expected_, arrived_ = 0;
    long generation_ = 0;
};

struct Block {
    explicit Block(int threads) : barrier(threads) {
        for (int w = 0; w < (threads + WARP_SIZE - 1) / WARP_SIZE; ++w) {
            int lanes = std::min(WARP_SIZE, threads - w * WARP_SIZE);
            warps.push_back(std::make_unique<Barrier>(lanes));
            warp_lanes.push_back(lanes);
        }
        exchange.resize(warps.size() * WARP_SIZE);
    }
    Barrier barrier;
    std::vector<std::unique_ptr<Barrier>> warps;
    std::vector<int> warp_lanes;
    std::vector<double> exchange;  // one slot per lane: what a shuffle publishes
};

inline thread_local Block* current_block = nullptr;

}  // namespace cuda_emu

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

inline double __longlong_as_double(long long bits) { return std::bit_cast<double>(bits); }

inline void __syncthreads() { cuda_emu::current_block->barrier.arrive_and_wait(); }

// Every lane of the warp must take part: a full-mask shuffle reached by only some lanes (or
// issued in a partial warp) is undefined on hardware, so here it is an error.
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
    auto* block = cuda_emu::current_block;
    const int warp = threadIdx.x / cuda_emu::WARP_SIZE, lane = threadIdx.x % cuda_emu::WARP_SIZE;
    if (mask != 0xffffffffu || block->warp_lanes[warp] != cuda_emu::WARP_SIZE)
        throw std::logic_error("__shfl_xor_sync: only full masks over whole warps are emulated");
    double* slots = &block->exchange[warp * cuda_emu::WARP_SIZE];
    slots[lane] = static_cast<double>(value);
    block->warps[warp]->arrive_and_wait();
    T result = static_cast<T>(slots[lane ^ lane_mask]);
    block->warps[warp]->arrive_and_wait();  // nobody overwrites a slot before all have read it
    return result;
}

namespace cuda_emu {

// Run kernel(args...) over grid x block threads; returns 0, or 1 after printing why not.
template <typename Kernel, typename... Args>
int launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
    if (block.y != 1 || block.z != 1 || grid.y != 1 || grid.z != 1) {
        std::fprintf(stderr, "cuda_emu: only 1-D grids and blocks are emulated\n");
        return 1;
    }
    gridDim = grid;
    blockDim = block;
    for (unsigned b = 0; b < grid.x; ++b) {
        Block shared_state(block.x);
        std::atomic<bool> failed{false};
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block.x; ++t) {
            threads.emplace_back([&, t] {
                threadIdx = dim3{t, 0, 0};
                blockIdx = dim3{b, 0, 0};
                current_block = &shared_state;
                try {
                    kernel(args...);
                } catch (const std::exception& e) {
                    if (!failed.exchange(true))
                        std::fprintf(stderr, "cuda_emu: block %u thread %u: %s\n", b, t, e.what());
                }
                shared_state.barrier.arrive_and_drop();
                shared_state.warps[t / WARP_SIZE]->arrive_and_drop();
            });
        }
        for (auto& thread : threads) thread.join();
        if (failed) return 1;
    }
    return 0;
}

}  // namespace cuda_emu
