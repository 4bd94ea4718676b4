"""nano2_export and nano2_import: a nano2 checkpoint to a transformers GPT-2 folder, and back.

transformers' GPT2LMHeadModel holds a nano2 model exactly. Its Conv1D weights are (in, out) like
ours, c_attn is q|k|v, its LayerNorm eps is 1e-5 and gelu_new is the tanh GELU, so every block
tensor maps one to one under another name. Only the ends of the model differ:
    wte     = scale · E   (nano2 scales the looked-up rows by √d, GPT-2 by 1)
    wpe     = the sinusoid table (seq_len rows), or the learned pos_emb.weight
    lm_head = E           (a head of its own, tie_word_embeddings false, only when scale ≠ 1)
An imported GPT-2 is a nano2 model with positions="learned" and scale_embedding=false; what nano2
cannot represent (another activation, attention scaled by layer, ...) is refused
in one line. Both directions read and write safetensors with NumPy alone: no torch, no transformers.
"""
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile

import numpy as np

from engine import comm
from engine.errors import UserError
from engine.params import current_umask, read_safetensors, write_safetensors
from layers.model import parameter_shapes
from layers.positions import sinusoidal_table
from train.checkpoint import FORMAT, read_any_checkpoint
from train.cli import ArgumentParser, run_main
from train.config import config_from_dict
from train.tokenizer import TOKENIZERS, ByteTokenizer, GPT2Tokenizer

# nano2's layer names inside a block, and GPT-2's.
BLOCK_NAMES = {"ln1": "ln_1", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "ln2": "ln_2",
               "ffn.fc": "mlp.c_fc", "ffn.proj": "mlp.c_proj"}
END_NAMES = {"tok_emb.weight": "wte.weight", "pos_emb.weight": "wpe.weight",
             "ln_f.weight": "ln_f.weight", "ln_f.bias": "ln_f.bias"}
PREFIX = "transformer."  # GPT2LMHeadModel's names are GPT2Model's under this prefix; lm_head's is not
# The attention's causal mask, saved as buffers by older transformers: not parameters.
MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
# gelu_new and gelu_pytorch_tanh are one function, 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))), nano2's GELU.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
LAYER_NORM_EPS = 1e-5
# Each tokenizer's end-of-text token, which starts every training document (train/tokenizer.py);
# GPT-2's is known without tiktoken's files.
EOT_TOKENS = {ByteTokenizer.name: ByteTokenizer.eot, GPT2Tokenizer.name: 50256}
# The exported README's words on each tokenizer, and a prompt's tokens in its example.
TOKENIZER_NOTES = {
    "byte": "Bytes: a token is the value of one UTF-8 byte (0-255), and token 0 marks the start of a document. "
            "No tokenizer files are needed.",
    "gpt2": "GPT-2's BPE (50257 tokens), as tiktoken's `gpt2` encoding or transformers' "
            "`GPT2TokenizerFast.from_pretrained(\"gpt2\")` reads it; <|endoftext|> (50256) marks the start of a "
            "document. No tokenizer files are written here.",
}
PROMPT_TOKENS = {
    "byte": 'tokens = torch.tensor([[0, *"Once upon a time".encode("utf-8")]])',
    "gpt2": 'import tiktoken\n'
            'tokens = torch.tensor([[50256, *tiktoken.get_encoding("gpt2").encode("Once upon a time")]])',
}
# config.json keys transformers' GPT2Config fills in when a file leaves them out.
GPT2_DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}
WEIGHT_DTYPES = (np.float16, np.float32, np.float64)  # float16 widens to float32 exactly


def gpt2_name(name):
    """GPT2Model's name of nano2 parameter `name` (without the transformer. prefix)."""
    if name in END_NAMES:
        return END_NAMES[name]
    _, i, rest = name.split(".", 2)  # blocks.{i}.{layer}.{weight|bias}
    layer, kind = rest.rsplit(".", 1)
    return f"h.{i}.{BLOCK_NAMES[layer]}.{kind}"


def embedding_scale(cfg):
    return math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0  # as layers/embedding.py's TokenEmbedding


# ---------------------------------------------------------------- export

def checkpoint_parameters(tensors, cfg, path):
    """{name: array} of the model's parameters among a checkpoint's tensors, each there in its shape."""
    params = {}
    for name, shape in parameter_shapes(cfg):
        if name not in tensors:
            raise UserError(f"{path} has no tensor {name!r}: it is damaged or not a model's checkpoint")
        if tuple(tensors[name].shape) != tuple(shape):
            raise UserError(f"{path} holds {name!r} with shape {tuple(tensors[name].shape)}, but its config "
                            f"makes it {tuple(shape)}: it is damaged")
        params[name] = tensors[name]
    return params


def export_tensors(cfg, params):
    """(GPT2LMHeadModel's tensors of nano2 parameters {name: array}, whether its head is tied).
    A model without biases (bias=false) computes what GPT-2 computes with zero biases."""
    E = params["tok_emb.weight"]
    scale = embedding_scale(cfg)
    tensors = {PREFIX + gpt2_name(name): params[name] if name in params else np.zeros(shape, E.dtype)
               for name, shape in parameter_shapes(dataclasses.replace(cfg, bias=True, tie_head=True))}
    # The model's dtype times a Python float, as nano2's forward computes scale · E[idx].
    tensors[PREFIX + "wte.weight"] = scale * E
    if cfg.positions == "sinusoidal":  # else pos_emb.weight, already there as wpe
        tensors[PREFIX + "wpe.weight"] = sinusoidal_table(cfg.seq_len, cfg.d_model).astype(E.dtype)
    # A head of its own, or the tied head reading E itself where the input embedding is scaled
    head = E if cfg.tie_head and scale != 1.0 else params.get("head.weight")
    if head is not None:
        tensors["lm_head.weight"] = head
    return tensors, head is None


def gpt2_config(cfg, tied, dtype):
    """config.json of a GPT2LMHeadModel computing what nano2's model of cfg computes."""
    eot = EOT_TOKENS[cfg.tokenizer]
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.seq_len, "n_embd": cfg.d_model,
            "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.d_ff,
            "activation_function": "gelu_new", "layer_norm_epsilon": LAYER_NORM_EPS,
            # nano2 trains without dropout, so fine-tuning the export does too unless asked
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "tie_word_embeddings": tied, "bos_token_id": eot, "eos_token_id": eot, "dtype": str(dtype)}


def export_readme(cfg, ckpt, metadata, tied, n_parameters):
    name = os.path.basename(os.path.abspath(ckpt))
    positions = "the learned positions" if cfg.positions == "learned" else "nano2's sinusoid table, as weights"
    head = ("wte and lm_head are one tied matrix" if tied else
            f"wte holds √{cfg.d_model}·E (nano2 scales its embedding) and lm_head holds E itself, so the head "
            f"is untied (tie_word_embeddings false)")
    return f"""# {name}, a nano2 model as a transformers GPT-2

Written by `nano2_export` from `{name}` (step {metadata.get("step", 0)}): {cfg.n_layer} layers, d_model {cfg.d_model}, \
{cfg.n_head} heads, d_ff {cfg.d_ff}, a vocabulary of {cfg.vocab_size}, sequences of up to {cfg.seq_len} tokens; \
{n_parameters:,} parameters. wpe holds {positions}; {head}.

## Tokenizer

{TOKENIZER_NOTES[cfg.tokenizer]}

## Loading

```python
import torch
from transformers import GPT2LMHeadModel

model = GPT2LMHeadModel.from_pretrained("path/to/this/folder")
{PROMPT_TOKENS[cfg.tokenizer]}
logits = model(tokens).logits  # (1, T, {cfg.vocab_size})
```
"""


def write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def fsync_folder(path):
    """Put a folder's entries on disk, as the files in it already are."""
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_folder(out, tensors, texts):
    """Write model.safetensors and {file name: text} into folder `out` at once: into a temporary
    folder beside it, renamed to `out` when complete, so a failed export leaves nothing behind."""
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"--out {out} already exists{'' if os.path.isdir(out) else ' as a file'}; "
                        f"export into a new or empty folder")
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.tmp-")
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide the model from other users
        weights = os.path.join(tmp, "model.safetensors")
        write_safetensors(weights, tensors, {"format": "pt"})  # the tag transformers asks for
        for file_name, text in texts.items():
            write_text(os.path.join(tmp, file_name), text)
        fsync_folder(tmp)
        os.replace(tmp, out)  # POSIX renames a folder over an empty one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_folder(parent)


def check_exportable(cfg, ckpt):
    """Refuse, in one line, a model that GPT-2's format cannot hold."""
    if cfg.activation != "gelu":
        raise UserError(f"{ckpt}: its MLP's activation is {cfg.activation}, and GPT-2's format holds the tanh GELU "
                        f"alone (activation_function gelu_new)")
    if cfg.norm != "layernorm":
        raise UserError(f"{ckpt}: it normalises with {cfg.norm}, and GPT-2's format holds LayerNorms alone")
    if cfg.positions == "rotary":
        raise UserError(f"{ckpt}: its positions are rotary, and GPT-2's format holds an added position table alone")
    if cfg.qk_norm:
        raise UserError(f"{ckpt}: it normalises each head's q and k (qk_norm), which GPT-2's attention does not")


def export_checkpoint(ckpt, out):
    """Write the transformers folder of checkpoint `ckpt` to `out`; returns a line saying what it wrote."""
    tensors, metadata = read_any_checkpoint(ckpt)
    cfg = config_from_dict(metadata["config"], ckpt)
    check_exportable(cfg, ckpt)
    params = checkpoint_parameters(tensors, cfg, ckpt)
    hf_tensors, tied = export_tensors(cfg, params)
    dtype = params["tok_emb.weight"].dtype
    n_parameters = sum(t.size for t in hf_tensors.values())  # as transformers counts them, wpe and lm_head too
    config_text = json.dumps(gpt2_config(cfg, tied, dtype), indent=2) + "\n"
    write_folder(out, hf_tensors, {"config.json": config_text,
                                   "README.md": export_readme(cfg, ckpt, metadata, tied, n_parameters)})
    return (f"wrote {out}: a GPT2LMHeadModel of {n_parameters:,} parameters ({dtype}, "
            f"{'tied' if tied else 'untied'} head), reading the {cfg.tokenizer} tokenizer")


# ---------------------------------------------------------------- import

def read_weights(path):
    """{name: array} of one safetensors file of float weights (read_safetensors refuses bfloat16)."""
    weights = read_safetensors(path)[0]
    for name, weight in weights.items():
        if weight.dtype not in WEIGHT_DTYPES:
            raise UserError(f"{path}: tensor {name} is {weight.dtype}; nano2_import reads float32, float64 and float16")
    return weights


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} must hold a JSON object")
    return value


def read_hf_weights(folder):
    """Every tensor of a transformers folder's model.safetensors, or of the shards its index names."""
    single, index = os.path.join(folder, "model.safetensors"), os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(single):
        return read_weights(single)
    if os.path.isfile(index):
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise UserError(f"{index} has no weight_map of tensor names to files")
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(read_weights(os.path.join(folder, shard)))
        return tensors
    for other in ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack"):
        if os.path.isfile(os.path.join(folder, other)):
            raise UserError(f"{folder} holds {other} but no model.safetensors, and nano2_import reads safetensors "
                            f"only; convert it once with transformers: "
                            f"GPT2LMHeadModel.from_pretrained(DIR).save_pretrained(NEW_DIR)")
    raise UserError(f"{folder} has no model.safetensors")


def check_gpt2_config(hf, source):
    """Refuse, in one line, a GPT-2 that computes something nano2's model cannot."""
    if hf.get("model_type") != "gpt2":
        raise UserError(f"{source}: model_type is {hf.get('model_type')!r}; nano2_import reads GPT-2 models only")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in TANH_GELUS:
        raise UserError(f"{source}: activation_function {activation!r} is not nano2's tanh GELU "
                        f"({' or '.join(TANH_GELUS)})")
    if hf.get("scale_attn_by_inverse_layer_idx", False):
        raise UserError(f"{source}: scale_attn_by_inverse_layer_idx is true, but nano2 scales every layer's "
                        f"attention scores by 1/√head_size alone")
    if not hf.get("scale_attn_weights", True):
        raise UserError(f"{source}: scale_attn_weights is false, but nano2 scales attention scores by 1/√head_size")
    if hf.get("add_cross_attention", False):
        raise UserError(f"{source}: add_cross_attention is true, but nano2 is a decoder without cross-attention")
    eps = hf.get("layer_norm_epsilon", LAYER_NORM_EPS)
    if eps != LAYER_NORM_EPS:
        raise UserError(f"{source}: layer_norm_epsilon is {eps}, but nano2's LayerNorm has {LAYER_NORM_EPS}")
    # reorder_and_upcast_attn changes only the order of the operations (and mixed precision): accepted.


def nano2_config(hf, tokenizer, dtype, source, tie_head=True):
    """The nano2 Config of a GPT-2 config.json (already checked), reading `tokenizer` (None: by the vocabulary)."""
    sizes = {key: hf.get(key, default) for key, default in GPT2_DEFAULTS.items()}
    sizes["n_inner"] = hf.get("n_inner")  # None: 4 · n_embd
    for key, value in sizes.items():
        if (type(value) is not int or value <= 0) and not (key == "n_inner" and value is None):
            raise UserError(f"{source}: {key} must be a positive integer, got {json.dumps(value)}")
    vocab_size = sizes["vocab_size"]
    # A vocabulary of 50257 tokens or more (nanoGPT pads it to 50304) is GPT-2's BPE.
    tokenizer = tokenizer or ("gpt2" if vocab_size >= GPT2Tokenizer.vocab_size else "byte")
    if vocab_size < TOKENIZERS[tokenizer].vocab_size:
        raise UserError(f"{source}: a vocabulary of {vocab_size} tokens cannot hold the {tokenizer} "
                        f"tokenizer's {TOKENIZERS[tokenizer].vocab_size}")
    return config_from_dict({"vocab_size": vocab_size, "d_model": sizes["n_embd"], "n_layer": sizes["n_layer"],
                             "n_head": sizes["n_head"], "d_ff": sizes["n_inner"] or 4 * sizes["n_embd"],
                             "seq_len": sizes["n_positions"], "positions": "learned", "scale_embedding": False,
                             "tokenizer": tokenizer, "dtype": str(dtype), "tie_head": tie_head}, source)


def unprefixed(weights):
    """(GPT-2's tensors under GPT2Model's names, lm_head's as it is; the prefix they had)."""
    prefix = PREFIX if any(name.startswith(PREFIX) for name in weights) else ""
    return {name.removeprefix(prefix): value for name, value in weights.items()}, prefix


def has_own_head(weights):
    """Whether a GPT-2's lm_head.weight is a matrix of its own, not wte (which transformers ties it to)."""
    weights, _ = unprefixed(weights)
    head, wte = weights.get("lm_head.weight"), weights.get("wte.weight")
    return head is not None and not (wte is not None and np.array_equal(head, wte))


def import_parameters(weights, cfg, tied, folder):
    """{nano2 name: array} of a GPT-2's tensors (prefixed or not), every one there in its shape,
    none left over; an lm_head of its own becomes head.weight (cfg.tie_head false)."""
    weights, prefix = unprefixed(weights)
    params = {}
    for name, shape in parameter_shapes(dataclasses.replace(cfg, tie_head=True)):
        hf_name = prefix + gpt2_name(name)
        if gpt2_name(name) not in weights:
            raise UserError(f"{folder}: no tensor {hf_name}; not a whole GPT-2 model")
        value = weights.pop(gpt2_name(name))
        if tuple(value.shape) != tuple(shape):
            raise UserError(f"{folder}: {hf_name} has shape {tuple(value.shape)}, but config.json's sizes "
                            f"make it {tuple(shape)}")
        params[name] = value
    head = weights.pop("lm_head.weight", None)
    # transformers ties lm_head to wte unless tying is off or the file holds an lm_head that differs.
    if head is None and not tied:
        raise UserError(f"{folder}: tie_word_embeddings is false but there is no lm_head.weight "
                        f"(transformers would start the head at random)")
    if not cfg.tie_head:
        if tuple(head.shape) != (cfg.vocab_size, cfg.d_model):
            raise UserError(f"{folder}: lm_head.weight has shape {tuple(head.shape)}, but config.json's sizes "
                            f"make it {(cfg.vocab_size, cfg.d_model)}")
        params["head.weight"] = head
    extra = [name for name in weights if not MASK_BUFFER.fullmatch(name)]
    if extra:
        raise UserError(f"{folder}: tensor {prefix + extra[0]} is not part of a GPT-2 that nano2 can represent")
    return params


def import_folder(folder, out, tokenizer=None):
    """Write the nano2 checkpoint of transformers GPT-2 folder `folder` to `out`; returns a line saying what."""
    if not os.path.isdir(folder):
        raise UserError(f"--hf {folder}: no such folder")
    if os.path.exists(out):
        raise UserError(f"--out {out} already exists; import into a new file")
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"{folder} has no config.json: not a transformers model folder")
    hf = read_json(config_path)
    check_gpt2_config(hf, config_path)
    weights = read_hf_weights(folder)
    # float16 widens to float32 exactly; float64 stays, so export after import gives the same tensors.
    dtype = np.float64 if any(w.dtype == np.float64 for w in weights.values()) else np.float32
    cfg = nano2_config(hf, tokenizer, np.dtype(dtype), config_path, tie_head=not has_own_head(weights))
    params = import_parameters(weights, cfg, hf.get("tie_word_embeddings", True), folder)
    params = {name: value.astype(dtype, copy=False) for name, value in params.items()}
    write_safetensors(out, params, {"format": FORMAT, "config": cfg.to_dict(), "step": 0,
                                    "best_val_loss": math.inf, "imported_from": os.path.abspath(folder)})
    return (f"wrote {out}: {sum(p.size for p in params.values()):,} parameters ({np.dtype(dtype)}) of {folder}, "
            f"positions learned, scale_embedding false, {'tied' if cfg.tie_head else 'untied'} head, "
            f"tokenizer {cfg.tokenizer}")


# ---------------------------------------------------------------- commands

def export_main(argv=None):
    parser = ArgumentParser(prog="nano2_export", epilog=None,
                            description="Write a nano2 checkpoint as a transformers GPT2LMHeadModel folder.")
    parser.add_argument("--ckpt", required=True, help="a nano2 checkpoint (trained or imported)")
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    args = parser.parse_args(argv)
    if comm.world().is_root:  # under mpirun, one rank writes
        print(export_checkpoint(args.ckpt, args.out))
    return 0


def import_main(argv=None):
    parser = ArgumentParser(prog="nano2_import", epilog=None,
                            description="Read a local transformers GPT-2 folder into a nano2 checkpoint.")
    parser.add_argument("--hf", required=True, metavar="DIR", help="a folder with config.json and model.safetensors")
    parser.add_argument("--out", required=True, metavar="CKPT", help="the checkpoint to write (a new file)")
    parser.add_argument("--tokenizer", choices=tuple(TOKENIZERS),
                        help="the tokenizer the model reads (default: gpt2 for GPT-2's 50257 tokens, else byte)")
    args = parser.parse_args(argv)
    if comm.world().is_root:
        print(import_folder(args.hf, args.out, args.tokenizer))
    return 0


def export_entry():
    sys.exit(run_main(export_main, "nano2_export"))


def import_entry():
    sys.exit(run_main(import_main, "nano2_import"))
