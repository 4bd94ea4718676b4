"""Launch geometry of the CUDA kernels: pure Python, no CuPy, so the CPU emulation of the
kernels (tests/cuda_emu) launches them exactly as the GPU backend does."""

WARP = 32


def softmax_xent_geometry(n_rows, vocab_size):
    """(grid, block): a block per row; enough threads to cover a short row in one sweep, at
    most 1024, always whole warps (the block reduction shuffles with a full mask)."""
    threads = min(1024, max(WARP, -(-vocab_size // WARP) * WARP))
    return (n_rows, 1, 1), (threads, 1, 1)


ATTENTION_WARPS_PER_BLOCK = 4
ATTENTION_HEAD_SIZES = (32, 64, 128)


def attention_geometry(heads_batch, seq_len):
    """(grid, block) for every attention kernel: a warp per row of B * H * T rows, 4 warps a block."""
    rows = heads_batch * seq_len
    return (-(-rows // ATTENTION_WARPS_PER_BLOCK), 1, 1), (ATTENTION_WARPS_PER_BLOCK * WARP, 1, 1)
