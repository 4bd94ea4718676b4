"""Run configuration: a JSON file of known keys, then `--key=value` overrides, then validation.

Every mistake (an unknown key, a wrong type, sizes that cannot work) is a UserError, which the
command-line tools print as one line before exiting with status 2.
"""
import dataclasses
import json
import math
import os
from dataclasses import dataclass

from engine.backend import DEVICES, DTYPES
from engine.comm import COMM_KINDS, DEFAULT_TIMEOUT
from engine.errors import UserError
from layers.block import NORMS
from layers.ffn import ACTIVATIONS
from layers.model import POSITIONS, ModelConfig
from train.checkpoint import MODEL_KEYS, checkpoint_model
from train.tokenizer import TOKENIZERS


@dataclass
class Config(ModelConfig):
    """The model's shape (ModelConfig's keys, first) and the run's."""
    # run
    batch_size: int = 8
    seed: int = 1337
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 0              # CPU threads per rank (one pool); 0: the cores shared among local ranks
    comm: str = "mpi"             # gradient allreduce: "mpi", or "nccl" between GPUs
    comm_timeout: float = DEFAULT_TIMEOUT  # seconds a collective may take before the job ends
    zero: int = 0                 # 1: ZeRO-1, AdamW's moments sharded over the ranks (llm.c's -z 1)
    cuda_aware_mpi: str = "auto"  # whether MPI takes GPU buffers: "auto" (the library's answer), "yes", "no"
    tf32: bool = False            # on the GPU, float32 matrix products in TF32 (faster, ~1e-3 relative)
    # data (train/data.py)
    data: str = "stories"
    tokenizer: str = "byte"
    data_dir: str = ""            # "" means data/<source>-<tokenizer>
    num_stories: int = 20000      # how many built-in stories to generate
    val_fraction: float = 0.05    # held out when a source has no validation split
    # optimisation
    max_steps: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0        # largest global gradient norm; 0 turns clipping off
    embedding_lr: float = 0.0     # AdamW's peak rate for tok_emb (and pos_emb); 0: lr. Each on lr's schedule
    head_lr: float = 0.0          # ... for an untied head; 0: lr
    vector_lr: float = 0.0        # ... for every 1-D parameter (norms' weights, biases); 0: lr
    optimizer: str = "adamw"      # "adamw", or "muon": Muon for the blocks' matrices, AdamW for the rest
    muon_lr: float = 0.02         # Muon's peak learning rate, on lr's warm-up and decay schedule
    muon_momentum: float = 0.95
    tokens_per_step: int = 0      # 0 means batch_size * seq_len * ranks (no accumulation)
    # bookkeeping
    out_dir: str = "runs/nano2"
    eval_interval: int = 200
    eval_iters: int = 20
    log_interval: int = 10
    keep_checkpoints: int = 3     # the last k, besides the best
    wandb: bool = False
    wandb_project: str = "nano2"
    wandb_mode: str = "offline"

    def to_dict(self):
        return dataclasses.asdict(self)


FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Config)}
POSITIVE = ("vocab_size", "d_model", "n_layer", "n_head", "d_ff", "seq_len", "rope_base", "batch_size", "num_stories",
            "max_steps", "lr", "muon_lr", "comm_timeout", "eval_interval", "eval_iters", "log_interval",
            "keep_checkpoints")
NON_NEGATIVE = ("seed", "threads", "min_lr", "warmup_steps", "weight_decay", "adam_eps", "grad_clip", "tokens_per_step",
                "embedding_lr", "head_lr", "vector_lr")
CHOICES = {"dtype": tuple(DTYPES), "device": DEVICES, "comm": COMM_KINDS, "cuda_aware_mpi": ("auto", "yes", "no"),
           "tokenizer": tuple(TOKENIZERS), "wandb_mode": ("offline", "online", "disabled"),
           "positions": POSITIONS, "activation": ACTIVATIONS, "norm": NORMS, "optimizer": ("adamw", "muon")}


def typed_value(key, value, source):
    """`value` as the type of config key `key`, or a UserError naming where it came from."""
    kind = FIELD_TYPES[key]
    type_name = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]
    if isinstance(value, str) and kind is not str:  # from the command line
        text = value.strip().lower()
        try:
            if kind is bool:
                value = {"true": True, "1": True, "false": False, "0": False}[text]
            else:
                value = kind(text)
        except (KeyError, ValueError):
            raise UserError(f"{source}: {key} must be {type_name}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise UserError(f"{source}: {key} must be {type_name}, got {json.dumps(value)}")
    if kind is float and not math.isfinite(value):  # NaN would pass every range check below
        raise UserError(f"{source}: {key} must be a finite number, got {value}")
    return value


def validate(cfg):
    for key in POSITIVE:
        if getattr(cfg, key) <= 0:
            raise UserError(f"config: {key} must be positive, got {getattr(cfg, key)}")
    for key in NON_NEGATIVE:
        if getattr(cfg, key) < 0:
            raise UserError(f"config: {key} must not be negative, got {getattr(cfg, key)}")
    for key, choices in CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise UserError(f"config: {key} must be one of {', '.join(choices)}, got {getattr(cfg, key)!r}")
    if cfg.zero not in (0, 1):
        raise UserError(f"config: zero must be 0 (every rank holds all of AdamW's state) or 1 (ZeRO-1), "
                        f"got {cfg.zero}")
    if cfg.d_model % cfg.n_head != 0:
        raise UserError(f"config: d_model ({cfg.d_model}) must be divisible by n_head ({cfg.n_head})")
    if cfg.positions == "rotary" and (cfg.d_model // cfg.n_head) % 2:
        raise UserError(f"config: rotary positions turn pairs of dimensions, so heads need an even size "
                        f"(d_model / n_head is {cfg.d_model // cfg.n_head})")
    if cfg.qk_norm and cfg.d_model // cfg.n_head < 2:
        raise UserError(f"config: qk_norm needs heads of 2 or more dimensions (d_model / n_head is "
                        f"{cfg.d_model // cfg.n_head}): the RMSNorm of one number is only its sign")
    if not 0 < cfg.val_fraction < 1:
        raise UserError(f"config: val_fraction must be between 0 and 1, got {cfg.val_fraction}")
    if cfg.optimizer == "muon" and cfg.zero:
        raise UserError("config: optimizer muon needs each matrix's whole gradient on every rank, which zero=1 "
                        "shards; use zero=0")
    for key in ("beta1", "beta2", "muon_momentum"):
        if not 0 <= getattr(cfg, key) < 1:
            raise UserError(f"config: {key} must be in [0, 1), got {getattr(cfg, key)}")
    if cfg.min_lr > cfg.lr:
        raise UserError(f"config: min_lr ({cfg.min_lr}) must not exceed lr ({cfg.lr})")
    if cfg.vocab_size < TOKENIZERS[cfg.tokenizer].vocab_size:
        raise UserError(f"config: vocab_size {cfg.vocab_size} is smaller than the {cfg.tokenizer} "
                        f"tokenizer's {TOKENIZERS[cfg.tokenizer].vocab_size}")


def checked_values(values, source):
    """A dict of config values read from `source`, each key known and of its key's type."""
    if not isinstance(values, dict):
        raise UserError(f"{source} must hold a JSON object of config keys")
    for key, value in values.items():
        if key not in FIELD_TYPES:
            raise UserError(f"{source}: unknown config key {key!r} (known: {', '.join(FIELD_TYPES)})")
        values[key] = typed_value(key, value, source)
    return values


def config_from_dict(values, source):
    """The Config saved in a checkpoint's metadata (as Config.to_dict wrote it)."""
    cfg = Config(**checked_values(dict(values), source))
    validate(cfg)
    return cfg


def load_config(path=None, overrides=(), model_from=None):
    """The Config from JSON file `path` (or the defaults), with overrides applied: command-line
    words of the form `--key=value` or `--key value` (dashes in keys read as underscores).
    With model_from (a checkpoint's path) the model's keys and tokenizer come from there, and a
    model key said otherwise must agree; seq_len may differ where positions are computed, and be
    shorter where they are learned (the table is then cropped, as nanoGPT's crop_block_size)."""
    values = {}
    if path is not None:
        if not os.path.isfile(path):
            raise UserError(f"config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None
        values = checked_values(values, path)
    items = list(overrides)
    while items:
        item = items.pop(0)
        if not item.startswith("--") or item == "--":
            raise UserError(f"unrecognised argument {item!r}; config overrides look like --key=value")
        key, has_value, value = item[2:].partition("=")
        key = key.replace("-", "_")
        if key not in FIELD_TYPES:
            raise UserError(f"unknown option or config key --{key} (config keys: {', '.join(FIELD_TYPES)})")
        if not has_value:
            if not items or items[0].startswith("--"):
                raise UserError(f"--{key} needs a value")
            value = items.pop(0)
        values[key] = typed_value(key, value, f"--{key}")
    if model_from is not None:
        values = with_checkpoint_model(values, model_from)
    cfg = Config(**values)
    validate(cfg)
    return cfg


def cover_seq_len(cfg, seq_len):
    """Make cfg's model take sequences of seq_len tokens: a computed position table grows to
    them, a learned one cannot (its rows are parameters)."""
    if seq_len > cfg.seq_len and cfg.positions == "learned":
        raise UserError(f"sequences of {seq_len} tokens are longer than the learned positions' {cfg.seq_len} rows")
    cfg.seq_len = max(cfg.seq_len, seq_len)


def with_checkpoint_model(values, path):
    """`values` (the keys a config file and the command line said) over a checkpoint's model, or a
    UserError naming a said model key that would change the checkpoint's model."""
    model = checkpoint_model(path)
    for key in MODEL_KEYS:
        if key in values and values[key] != model[key]:
            raise UserError(f"{key} {values[key]} would change the model of {path} ({key} {model[key]} there); "
                            f"the model's shape comes from the checkpoint")
    if model["positions"] == "learned" and values.get("seq_len", 0) > model["seq_len"]:
        raise UserError(f"seq_len {values['seq_len']} is longer than the {model['seq_len']} learned positions "
                        f"of {path}")
    return model | values
