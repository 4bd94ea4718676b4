// Launches a kernel named `planted_deadlock` from KERNEL_SOURCE with a short barrier timeout,
// to show that the emulator turns a deadlock into a failure instead of a hang.
#include "cuda_emu.h"
#include KERNEL_SOURCE

extern "C" int run(float* x) {
    cuda_emu::timeout = std::chrono::milliseconds(300);
    return cuda_emu::launch(dim3{1}, dim3{32}, planted_deadlock, x);
}
