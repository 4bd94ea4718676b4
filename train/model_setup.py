"""The model a config describes, on this rank's device and threads: what every command sets
up first."""
from engine.backend import get_array_module, resolve_dtype
from engine.comm import world
from engine.errors import UserError
from engine.kernels.launch import ATTENTION_HEAD_SIZES
from engine.threads import set_threads, threads_per_rank
from layers.model import Decoder, init_parameters
from train.checkpoint import load_parameters


def set_up_rank(cfg, dtype=None, ckpt=None):
    """(model, threads) for this rank: its CPU threads (cfg.threads, or the machine's cores
    shared among its ranks), the bound on its collectives (cfg.comm_timeout) and whether its
    MPI takes device buffers (cfg.cuda_aware_mpi) set, then build_model, its parameters read
    from checkpoint `ckpt` when given (each rank reads the file)."""
    world().timeout, world().cuda_aware_mpi = cfg.comm_timeout, cfg.cuda_aware_mpi
    threads = cfg.threads or threads_per_rank(world().local_size)
    set_threads(threads)
    model = build_model(cfg, dtype)
    if ckpt is not None:
        load_parameters(ckpt, model)
    return model, threads


def build_model(cfg, dtype=None):
    """A Decoder of cfg's shape on cfg's device, its parameters initialised from cfg.seed."""
    dtype_name = dtype or cfg.dtype
    head_size = cfg.d_model // cfg.n_head
    if cfg.device == "gpu" and head_size not in ATTENTION_HEAD_SIZES:
        raise UserError(f"config: the GPU attention kernels take head sizes (d_model / n_head) "
                        f"{', '.join(map(str, ATTENTION_HEAD_SIZES))}, not {head_size}")
    model = Decoder(cfg, resolve_dtype(dtype_name), get_array_module(cfg.device, cfg.tf32, world().local_rank))
    init_parameters(model.store, cfg.n_layer, cfg.seed, cfg.zero_init_proj)
    return model
