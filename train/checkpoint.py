"""Checkpoints: parameters, AdamW moments and the run's position in one safetensors file.

Files are `ckpt-<step>.safetensors` in the run folder, written atomically (temporary file,
fsync, rename), plus `best.safetensors` for the lowest validation loss. The run's position
is its step: batches are a pure function of (seed, step) (train/data.py), so the step is
also the data position and the random state, and a resumed run continues bit for bit.
"""
import glob
import os
import re
import shutil
from dataclasses import fields

from engine.errors import UserError
from engine.params import read_safetensors, write_safetensors
from layers.model import ModelConfig

# The keys a checkpoint's model must share with the config it loads into; seq_len may differ
# where the position table is computed, not learned. A key a checkpoint predates has its default.
MODEL_KEYS = tuple(f.name for f in fields(ModelConfig) if f.name != "seq_len")
MODEL_DEFAULTS = {f.name: f.default for f in fields(ModelConfig)}
FORMAT = "nano2 checkpoint"


def checkpoint_path(out_dir, step):
    return os.path.join(out_dir, f"ckpt-{step:07d}.safetensors")


def step_checkpoints(out_dir):
    """[(step, path)] of the run folder's step checkpoints, oldest first."""
    found = []
    for path in glob.glob(os.path.join(out_dir, "ckpt-*.safetensors")):
        match = re.fullmatch(r"ckpt-(\d+)\.safetensors", os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(path, model, optimizer_tensors, cfg, state):
    tensors = model.store.state_tensors()
    tensors.update(optimizer_tensors)
    write_safetensors(path, tensors, {"format": FORMAT, "config": cfg.to_dict(), **state})


def mark_best(path, out_dir):
    """Make best.safetensors a second name for the checkpoint just written (a hard link, swapped in
    atomically), instead of serialising the same state twice; a plain copy where links fail."""
    best = os.path.join(out_dir, "best.safetensors")
    tmp = best + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
        with open(tmp, "rb") as f:  # on disk before the rename, as write_safetensors does
            os.fsync(f.fileno())
    os.replace(tmp, best)


def keep_last(out_dir, k):
    """Delete all but the newest k step checkpoints (best.safetensors is a separate file)."""
    for _, path in step_checkpoints(out_dir)[:-k]:
        os.remove(path)


def read_any_checkpoint(path, tensors=True):
    """(tensors, metadata) of a nano2 checkpoint, whatever model it holds, or a UserError."""
    tensors, metadata = read_safetensors(path, tensors)
    if metadata.get("format") != FORMAT or not isinstance(metadata.get("config"), dict):
        raise UserError(f"{path} is not a nano2 checkpoint")
    return tensors, metadata


def checkpoint_model(path):
    """The model keys of a checkpoint's config (those it predates at their defaults), and the
    tokenizer its model reads; from the file's header alone."""
    saved = read_any_checkpoint(path, tensors=False)[1]["config"]
    return {key: saved.get(key, default) for key, default in MODEL_DEFAULTS.items()} | {
        "tokenizer": saved.get("tokenizer", "byte")}


def load_parameters(path, model):
    """Start `model` from a checkpoint's parameters (any nano2 checkpoint of its shape); a model of
    shorter sequences takes the first rows of learned positions (nanoGPT's crop_block_size)."""
    tensors = read_any_checkpoint(path)[0]
    if model.config.positions == "learned" and "pos_emb.weight" in tensors:
        tensors["pos_emb.weight"] = tensors["pos_emb.weight"][:model.config.seq_len]
    model.store.load_tensors(tensors, path)


def read_checkpoint(path, cfg):
    """(tensors, metadata) of a checkpoint that fits cfg's model, or a UserError saying why not."""
    tensors, metadata = read_any_checkpoint(path)
    saved = metadata["config"]
    keys = MODEL_KEYS + (("seq_len",) if cfg.positions == "learned" else ())
    for key in keys:
        if saved.get(key, MODEL_DEFAULTS[key]) != getattr(cfg, key):
            raise UserError(f"{path} is from a different config: {key} is {saved.get(key, MODEL_DEFAULTS[key])} "
                            f"there and {getattr(cfg, key)} here")
    step, best = metadata.get("step"), metadata.get("best_val_loss")
    if type(step) is not int or step < 0 or not isinstance(best, (int, float)) or isinstance(best, bool):
        raise UserError(f"{path} is damaged: its metadata needs a step count and a best validation loss")
    return tensors, metadata


def load_checkpoint(path, model, optimizer, cfg, muon=None):
    """Load the parameters (and Muon's momentum); returns (metadata, the whole AdamW moments (m, v))."""
    tensors, metadata = read_checkpoint(path, cfg)
    model.store.load_tensors(tensors, path)
    if muon is not None:
        muon.load_state(tensors, path)
    return metadata, optimizer.moments_from_tensors(tensors, path)


def latest_checkpoint(out_dir):
    found = step_checkpoints(out_dir)
    if not found:
        raise UserError(f"--resume: no checkpoint (ckpt-*.safetensors) in {out_dir}")
    return found[-1][1]
