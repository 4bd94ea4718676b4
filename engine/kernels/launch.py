"""How the GPU backend compiles and launches the CUDA kernels: pure Python, no CuPy, so the
tests compile them exactly as the backend does (NVRTC) and the CPU emulation of the kernels
(tests/cuda_emu) launches them with the same geometry."""

WARP = 32
ATTENTION_HEAD_SIZES = (32, 64, 128)
NVRTC_OPTIONS = ("-std=c++17",)  # CuPy adds the architecture and -ftz=true
# The template instantiations of each source that the backend compiles (CuPy's name_expressions).
NAME_EXPRESSIONS = {
    "softmax_xent.cu": tuple(f"softmax_xent_{pass_}<{t}>" for pass_ in ("forward", "backward")
                             for t in ("float", "double")),
    "attention.cu": tuple(f"attention_{kernel}<{t}, {hd}>"
                          for kernel in ("forward", "row_dot", "backward_dq", "backward_dkdv")
                          for t in ("float", "double") for hd in ATTENTION_HEAD_SIZES),
}


def softmax_xent_geometry(n_rows, vocab_size):
    """(grid, block): a block per row; enough threads to cover a short row in one sweep, at
    most 1024, always whole warps (the block reduction shuffles with a full mask)."""
    threads = min(1024, max(WARP, -(-vocab_size // WARP) * WARP))
    return (n_rows, 1, 1), (threads, 1, 1)


ATTENTION_WARPS_PER_BLOCK = 4


def attention_geometry(heads_batch, seq_len):
    """(grid, block) for every attention kernel: a warp per row of B * H * T rows, 4 warps a block."""
    rows = heads_batch * seq_len
    return (-(-rows // ATTENTION_WARPS_PER_BLOCK), 1, 1), (ATTENTION_WARPS_PER_BLOCK * WARP, 1, 1)
