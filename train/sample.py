"""nano2_sample: generate text from a checkpoint, one token at a time with a key/value cache.

A prompt is preceded by the end-of-text token, as every training document is, so an empty
prompt starts a new story. Generation stops at the next end-of-text token or after
--max-new-tokens. When the context fills seq_len, it restarts from the last half of it.
"""
import sys

import numpy as np

from engine import comm
from engine.backend import to_numpy
from train.checkpoint import read_any_checkpoint
from train.cli import ArgumentParser, not_negative, positive, run_main
from train.config import config_from_dict
from train.model_setup import build_model
from train.tokenizer import get_tokenizer


def next_token(logits, temperature, top_k, rng):
    """Sample from softmax(logits / temperature) over the top_k tokens; temperature 0 is argmax."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    logits = logits / temperature
    if top_k:
        cutoff = np.sort(logits)[-min(top_k, logits.size)]
        logits = np.where(logits < cutoff, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    return int(rng.choice(logits.size, p=probs / probs.sum()))


def generate(model, prompt_tokens, max_new_tokens, temperature, top_k, rng, stop_token=None):
    """The prompt followed by up to max_new_tokens sampled tokens."""
    xp = model.xp
    tokens = list(prompt_tokens)
    context = tokens[-model.config.seq_len:]
    cache = model.new_kv_cache(1)
    logits = model.forward_cached(xp.asarray([context]), cache, 0)[0, -1]
    position = len(context)
    for _ in range(max_new_tokens):
        token = next_token(to_numpy(logits), temperature, top_k, rng)
        tokens.append(token)
        if token == stop_token:
            break
        if position == model.config.seq_len:  # the cache is full: start over from the last half window
            context = tokens[-(model.config.seq_len // 2):]
            cache = model.new_kv_cache(1)
            logits = model.forward_cached(xp.asarray([context]), cache, 0)[0, -1]
            position = len(context)
        else:
            logits = model.forward_cached(xp.asarray([[token]]), cache, position)[0, -1]
            position += 1
    return tokens


def load_model(path, device="cpu"):
    tensors, metadata = read_any_checkpoint(path)
    cfg = config_from_dict(metadata["config"], path)
    cfg.device = device
    model = build_model(cfg)
    model.store.load_tensors(tensors, path)
    return model, cfg


def main(argv=None):
    parser = ArgumentParser(prog="nano2_sample", description=__doc__.splitlines()[0], epilog=None)
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by nano2_train")
    parser.add_argument("--prompt", default="", help="text to continue (default: start a new story)")
    parser.add_argument("--max-new-tokens", type=not_negative(int), default=500)
    parser.add_argument("--temperature", type=not_negative(float), default=0.8)
    parser.add_argument("--top-k", type=not_negative(int), default=0, help="sample only from the k likeliest tokens (0: all)")
    parser.add_argument("--num-samples", type=positive(int), default=1)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args(argv)
    if not comm.world().is_root:
        return 0  # under mpirun, rank 0 alone samples (the others would print the same text)
    model, cfg = load_model(args.ckpt, args.device)
    tokenizer = get_tokenizer(cfg.tokenizer)
    prompt = [tokenizer.eot] + tokenizer.encode(args.prompt).tolist()
    rng = np.random.default_rng(args.seed)
    for n in range(args.num_samples):
        tokens = generate(model, prompt, args.max_new_tokens, args.temperature, args.top_k, rng, tokenizer.eot)
        if n:
            print("-" * 60)
        story = tokens[1:-1] if tokens[-1] == tokenizer.eot else tokens[1:]
        print(tokenizer.decode(story))
    return 0


def entry():
    sys.exit(run_main(main, "nano2_sample"))
