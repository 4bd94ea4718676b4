"""nano2_prepare: tokenise a source (see train/data.py) into train.bin / val.bin and meta.json.

The .bin files are the raw token stream (uint8 for bytes, uint16 for GPT-2 BPE), each
document preceded by the tokenizer's end-of-text token. Files are written under temporary
names and renamed, meta.json last, so a folder with a meta.json is always complete; running
again with the same source, tokenizer and sizes does nothing.
"""
import json
import multiprocessing
import os
import sys

import numpy as np
from tqdm import tqdm

from engine import comm
from engine.errors import UserError
from engine.params import temporary_file
from train.cli import ArgumentParser, make_folder, parse_with_config, positive, run_main
from train.data import data_dir_for, open_source, task_texts
from train.tokenizer import get_tokenizer

_worker_tokenizer = None


def _init_worker(tokenizer_name):
    global _worker_tokenizer
    _worker_tokenizer = get_tokenizer(tokenizer_name)


def tokenize_task(task):
    """(tokens, text bytes, documents) of one task, in a worker process."""
    texts = task_texts(task)
    pieces, n_bytes = [], 0
    for text in texts:
        pieces.append(np.array([_worker_tokenizer.eot], dtype=_worker_tokenizer.token_dtype))
        pieces.append(_worker_tokenizer.encode(text))
        n_bytes += len(text.encode("utf-8"))
    return np.concatenate(pieces), n_bytes, len(texts)


def is_prepared(data_dir, source_hash, tokenizer_name):
    try:
        with open(os.path.join(data_dir, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("source_hash") == source_hash and meta.get("tokenizer") == tokenizer_name


def prepare(cfg, workers=None, quiet=False):
    """Prepare cfg.data into its data folder (unless it already is); returns that folder."""
    data_dir = data_dir_for(cfg)
    tokenizer = get_tokenizer(cfg.tokenizer)  # fails here, once, if gpt2's BPE files are missing
    source_hash, read_tasks = open_source(cfg)
    if is_prepared(data_dir, source_hash, tokenizer.name):
        if not quiet:
            print(f"{data_dir} is up to date ({cfg.data}, {tokenizer.name} tokens); nothing to do")
        return data_dir
    tasks, n_docs = read_tasks()
    make_folder(data_dir, "data_dir")
    workers = workers or min(8, os.cpu_count() or 1)
    meta = {"source": cfg.data, "source_hash": source_hash, "tokenizer": tokenizer.name,
            "vocab_size": tokenizer.vocab_size, "dtype": np.dtype(tokenizer.token_dtype).name, "eot": tokenizer.eot}
    meta_path = os.path.join(data_dir, "meta.json")
    if os.path.isdir(meta_path):
        raise UserError(f"{meta_path} is a folder; remove it and prepare again")
    if os.path.exists(meta_path):
        os.remove(meta_path)  # the old .bin files are about to go: never leave a meta.json that lies
    written = []
    try:
        with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer.name,)) as pool:
            for split in ("train", "val"):
                fd, tmp = temporary_file(data_dir, prefix=f".{split}-", suffix=".bin")
                written.append(tmp)
                stats = write_split(pool, tasks[split], n_docs[split], fd, f"{split}.bin", quiet)
                meta.update({f"{split}_{key}": value for key, value in stats.items()})
        for tmp, split in zip(written, ("train", "val")):
            os.replace(tmp, os.path.join(data_dir, f"{split}.bin"))
        fd, tmp = temporary_file(data_dir, prefix=".meta-", suffix=".json")
        written.append(tmp)
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f, indent=2)
        os.replace(tmp, meta_path)
    finally:
        for tmp in written:
            if os.path.exists(tmp):
                os.remove(tmp)
    if not quiet:
        print(f"{data_dir}: train {meta['train_tokens']:,} tokens ({meta['train_documents']:,} documents), "
              f"val {meta['val_tokens']:,} tokens")
    return data_dir


def write_split(pool, tasks, n_docs, fd, name, quiet):
    """Tokenise `tasks` in the pool into the open file `fd`, in order; returns the counts."""
    n_tokens = n_bytes = 0
    # In a log (no terminal) the bar would write a frame per update; the summary line says it all.
    bar = tqdm(total=n_docs, unit="doc", disable=quiet or not sys.stderr.isatty(), desc=name)
    with os.fdopen(fd, "wb") as out, bar:
        for tokens, task_bytes, task_docs in pool.imap(tokenize_task, tasks):
            out.write(tokens.tobytes())
            n_tokens += len(tokens)
            n_bytes += task_bytes
            bar.update(task_docs)
        out.flush()
        os.fsync(out.fileno())
    return {"tokens": n_tokens, "bytes": n_bytes, "documents": n_docs}


def prepare_on_root(cfg, workers=None):
    """Under mpirun, one rank prepares and the others wait for it."""
    world = comm.world()
    world.timeout = cfg.comm_timeout
    if world.is_root:
        prepare(cfg, workers)
    world.barrier("the wait for rank 0's data preparation")


def main(argv=None):
    parser = ArgumentParser(prog="nano2_prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="JSON config file (default: the built-in defaults)")
    parser.add_argument("--workers", type=positive(int), help="tokenising processes (default: cores, at most 8)")
    args, cfg = parse_with_config(parser, argv)
    prepare_on_root(cfg, args.workers)
    return 0


def entry():
    sys.exit(run_main(main, "nano2_prepare"))
