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
    "layernorm.cu": tuple(f"layernorm_{pass_}<{t}>" for pass_ in ("forward", "backward") for t in ("float", "double")),
    "gelu.cu": tuple(f"gelu_{pass_}<{t}>" for pass_ in ("forward", "backward") for t in ("float", "double")),
    "attention.cu": tuple(f"attention_{kernel}<{t}, {hd}>"
                          for kernel in ("forward", "row_dot", "backward_dq", "backward_dkdv")
                          for t in ("float", "double") for hd in ATTENTION_HEAD_SIZES),
}


def softmax_xent_geometry(n_rows, vocab_size):
    """(grid, block): a block per row; enough threads to cover a short row in one sweep, at
    most 1024, always whole warps (the block reduction shuffles with a full mask)."""
    threads = min(1024, max(WARP, -(-vocab_size // WARP) * WARP))
    return (n_rows, 1, 1), (threads, 1, 1)


LAYERNORM_WARPS_PER_BLOCK = 8
LAYERNORM_MAX_BLOCKS = 1024


def layernorm_geometry(n_rows, max_blocks=LAYERNORM_MAX_BLOCKS):
    """(grid, block) for both LayerNorm kernels: a warp per row, 8 warps a block, and at most
    max_blocks blocks, which then stride over the rows. The backward writes one partial row of dw
    and db per block for the caller to sum, so the cap also bounds that reduction: at gpt2-small's
    8192 rows (batch 8 of 1024), 1024 blocks and partial rows, an eighth of the rows."""
    blocks = max(1, min(max_blocks, -(-n_rows // LAYERNORM_WARPS_PER_BLOCK)))
    return (blocks, 1, 1), (LAYERNORM_WARPS_PER_BLOCK * WARP, 1, 1)


GELU_THREADS = 256
GELU_MAX_BLOCKS = 4096


def gelu_geometry(n, max_blocks=GELU_MAX_BLOCKS):
    """(grid, block) for both GELU kernels: a thread per value, in blocks of 256, up to max_blocks
    blocks (4096: about four full waves of a 132-SM GPU at 2048 threads an SM), past which the
    grid-stride loop gives each thread several values."""
    blocks = max(1, min(max_blocks, -(-n // GELU_THREADS)))
    return (blocks, 1, 1), (GELU_THREADS, 1, 1)


ATTENTION_ROW_DOT_WARPS = 4
ATTENTION_ROW_LANES = 8  # threads sharing an owned row in the tiled kernels
ATTENTION_SHARED_BUDGET = 48 * 1024  # static shared memory per block
# Per tiled kernel: its HD-wide shared buffers on each side (owned and streamed rows), and its score buffers.
ATTENTION_BUFFERS = {"forward": (1, 1), "backward_dq": (2, 1), "backward_dkdv": (2, 2)}


def attention_tiles(kernel, itemsize, head_size):
    """(owned, streamed) rows per tile of a tiled attention kernel, as attention.cu's pick_tiles chooses them:
    powers of two from 64 down to 8, the most query-key pairs whose shared memory (rows padded by 16 bytes)
    fits the budget, the larger owned tile on a tie."""
    row_buffers, score_buffers = ATTENTION_BUFFERS[kernel]
    pad = 16 // itemsize
    best = (0, 0)
    for own in (64, 32, 16, 8):
        for stream in (s for s in (64, 32, 16, 8) if s <= own):
            size = itemsize * (row_buffers * (own + stream) * (head_size + pad) + score_buffers * own * (stream + pad))
            if size <= ATTENTION_SHARED_BUDGET and own * stream > best[0] * best[1]:
                best = (own, stream)
    return best


def attention_geometry(kernel, heads_batch, seq_len, itemsize, head_size):
    """(grid, block) of an attention kernel ("forward", "row_dot", "backward_dq", "backward_dkdv"). row_dot: a
    warp per row of the B * H * T rows, 4 warps a block. The tiled kernels: a block per head and owned tile, 8
    threads per owned row and 16 row groups (fewer for an 8-row tile); attention.cu maps the block index."""
    if kernel == "row_dot":
        rows = heads_batch * seq_len
        return (-(-rows // ATTENTION_ROW_DOT_WARPS), 1, 1), (ATTENTION_ROW_DOT_WARPS * WARP, 1, 1)
    own, _ = attention_tiles(kernel, itemsize, head_size)
    return (heads_batch * -(-seq_len // own), 1, 1), (ATTENTION_ROW_LANES * min(own, 16), 1, 1)
