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


ATTENTION_WARPS_PER_BLOCK = 4


def attention_geometry(heads_batch, seq_len):
    """(grid, block) for every attention kernel: a warp per row of B * H * T rows, 4 warps a block."""
    rows = heads_batch * seq_len
    return (-(-rows // ATTENTION_WARPS_PER_BLOCK), 1, 1), (ATTENTION_WARPS_PER_BLOCK * WARP, 1, 1)
