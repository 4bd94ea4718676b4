"""Where training text comes from, and the memory-mapped loader that feeds the model.

Sources, behind one `--data` option:
  stories      the built-in story generator (train/stories.py), the default: no download
  tinystories  roneneldan/TinyStories through `datasets` (train and validation splits)
  PATH         a file or a folder of them: TinyStories-style .txt (stories separated by
               <|endoftext|>), plain .txt (one document per file), and .json / .jsonl /
               .parquet with a `text` column, read through `datasets`' local loaders.
               Files with "val" in their name form the validation split; without any, the
               last val_fraction of the documents is held out.

A source is opened into *tasks*: small picklable units that a worker process turns into
text (stories are generated in the worker from their index range; file documents travel as
text), so tokenising runs in parallel with nothing shared.
"""
import contextlib
import hashlib
import json
import os
import socket

import numpy as np

from engine.errors import UserError
from train import stories

TEXT_SUFFIXES = (".txt",)
TABLE_SUFFIXES = (".json", ".jsonl", ".parquet")
TASK_DOCUMENTS = 256  # documents per task: big enough to amortise the hand-off to a worker


def data_dir_for(cfg):
    """The folder a source is prepared into: cfg.data_dir, or data/<source>-<tokenizer>."""
    if cfg.data_dir:
        return cfg.data_dir
    name = cfg.data if cfg.data in ("stories", "tinystories") else os.path.basename(os.path.normpath(cfg.data))
    return os.path.join("data", f"{name}-{cfg.tokenizer}")


# ---- sources -----------------------------------------------------------------------------

def open_source(cfg):
    """(a hash that changes whenever the text would, read_tasks): read_tasks() gives
    {"train": [task, ...], "val": [task, ...]} and the number of documents in each. Reading the
    documents waits for read_tasks, so an up-to-date folder is known as such without it."""
    if cfg.data == "stories":
        return open_stories(cfg)
    if cfg.data == "tinystories":
        return open_tinystories(cfg)
    return open_files(cfg)


def open_stories(cfg):
    n_val = max(1, round(cfg.num_stories * cfg.val_fraction))
    n_train = cfg.num_stories - n_val
    if n_train < 1:
        raise UserError(f"num_stories ({cfg.num_stories}) leaves no stories to train on after "
                        f"holding out val_fraction {cfg.val_fraction}")

    def tasks(start, stop):
        return [("stories", cfg.seed, i, min(i + TASK_DOCUMENTS, stop)) for i in range(start, stop, TASK_DOCUMENTS)]

    key = f"stories v{stories.GENERATOR_VERSION} seed={cfg.seed} n={cfg.num_stories} val={n_val}"
    return sha256_text(key), lambda: ({"train": tasks(0, n_train), "val": tasks(n_train, cfg.num_stories)},
                                      {"train": n_train, "val": n_val})


def open_tinystories(cfg):
    name = "roneneldan/TinyStories"
    try:
        with hub_offline_unless_reachable():
            import datasets
            splits = {"train": datasets.load_dataset(name, split="train"),
                      "val": datasets.load_dataset(name, split="validation")}
    except (ConnectionError, OSError, ValueError) as e:
        raise UserError(f"cannot load {name} ({str(e).splitlines()[0]}): this machine cannot reach the "
                        f"Hugging Face Hub and has no cached copy; use --data=stories (built in) or "
                        f"--data=PATH to downloaded TinyStories .txt/.jsonl/.parquet files") from None
    fingerprints = " ".join(ds._fingerprint for ds in splits.values())

    def read_tasks():
        tasks = {split: [("texts", ds[i:i + TASK_DOCUMENTS]["text"]) for i in range(0, len(ds), TASK_DOCUMENTS)]
                 for split, ds in splits.items()}
        return tasks, {split: len(ds) for split, ds in splits.items()}
    return sha256_text(f"{name} {fingerprints}"), read_tasks


@contextlib.contextmanager
def hub_offline_unless_reachable():
    """With no route to the Hub, switch `datasets` to offline mode for the duration: a cached copy
    still loads, and a missing one fails at once instead of after a minute of retries."""
    if hub_reachable():
        yield
        return
    import datasets
    import huggingface_hub
    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def hub_reachable(timeout=3.0):
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def open_files(cfg):
    path = cfg.data
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.endswith(TEXT_SUFFIXES + TABLE_SUFFIXES) and os.path.isfile(os.path.join(path, f)))
        if not files:
            raise UserError(f"{path} has no usable files (looked for {', '.join(TEXT_SUFFIXES + TABLE_SUFFIXES)})")
    elif os.path.isfile(path):
        if not path.endswith(TEXT_SUFFIXES + TABLE_SUFFIXES):
            raise UserError(f"{path}: unsupported file type; use {', '.join(TEXT_SUFFIXES + TABLE_SUFFIXES)}")
        files = [path]
    else:
        raise UserError(f"--data={path}: no such file or folder, and not a built-in source (stories, tinystories)")

    val_files = [f for f in files if "val" in os.path.basename(f).lower()]
    train_files = [f for f in files if f not in val_files]
    if not train_files:
        raise UserError(f"{path}: every file looks like a validation file (has 'val' in its name)")
    digest = hashlib.sha256(f"files val_fraction={cfg.val_fraction}".encode())
    for f in files:
        digest.update(os.path.basename(f).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)

    def read_tasks():
        train_docs = [doc for f in train_files for doc in read_documents(f)]
        if val_files:
            val_docs = [doc for f in val_files for doc in read_documents(f)]
        else:
            n_val = max(1, round(len(train_docs) * cfg.val_fraction))
            if n_val >= len(train_docs):
                raise UserError(f"{path} holds {len(train_docs)} document(s), and val_fraction {cfg.val_fraction} "
                                f"leaves none to train on; add documents, a file with 'val' in its name, or "
                                f"lower val_fraction")
            train_docs, val_docs = train_docs[:-n_val], train_docs[-n_val:]
        docs = {"train": train_docs, "val": val_docs}
        tasks = {split: [("texts", d[i:i + TASK_DOCUMENTS]) for i in range(0, len(d), TASK_DOCUMENTS)]
                 for split, d in docs.items()}
        return tasks, {split: len(d) for split, d in docs.items()}
    return digest.hexdigest(), read_tasks


def read_documents(path):
    """The non-empty documents of one local file, or a UserError that says what is wrong with it."""
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty")
    if path.endswith(TEXT_SUFFIXES):
        with open(path, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: invalid UTF-8 at byte {e.start}; the file was not used and nothing "
                            f"was written (re-encode it as UTF-8, e.g. with iconv)") from None
        docs = [d.strip() for d in text.split("<|endoftext|>")]
    else:
        docs = read_table_texts(path)
    docs = [d for d in docs if d]
    if not docs:
        raise UserError(f"{path} holds no text")
    return docs


def read_table_texts(path):
    import datasets
    datasets.disable_progress_bars()  # our own bar counts documents; theirs would break the one-line errors
    loader = "parquet" if path.endswith(".parquet") else "json"
    try:
        table = datasets.load_dataset(loader, data_files=path, split="train")
    except Exception as e:  # datasets wraps parser errors in several types of its own
        raise UserError(f"{path} could not be read as {loader} ({str(e).splitlines()[0][:200]})") from None
    if "text" not in table.column_names:
        raise UserError(f"{path} has no 'text' column (columns: {', '.join(table.column_names) or 'none'})")
    return [t for t in table["text"] if isinstance(t, str)]


def task_texts(task):
    """The documents a task stands for (run inside a worker)."""
    if task[0] == "stories":
        _, seed, start, stop = task
        return list(stories.generate_stories(seed, stop - start, start))
    return task[1]


def sha256_text(text):
    return hashlib.sha256(text.encode()).hexdigest()


# ---- the loader ----------------------------------------------------------------------------

class TokenData:
    """train.bin / val.bin of a prepared folder, memory-mapped.

    Batches are random windows of seq_len + 1 tokens. Which windows is a pure function of
    (seed, split, step): the whole step's windows are drawn at once, laid out as
    [micro_step][rank][row], and each rank reads its own rows. So a resumed run sees exactly
    the batches it would have seen, and N ranks together see what one rank would with the
    same global batch.
    """

    SPLITS = {"train": 0, "val": 1}

    def __init__(self, data_dir):
        meta_path = os.path.join(data_dir, "meta.json")
        if not os.path.isfile(meta_path):
            raise UserError(f"{data_dir} holds no prepared data (no meta.json); run nano2_prepare first")
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            dtype = np.dtype(meta["dtype"])
            expected = {split: int(meta[f"{split}_tokens"]) for split in self.SPLITS}
            self.vocab_size, self.tokenizer_name = int(meta["vocab_size"]), meta["tokenizer"]
            self.val_bytes = int(meta["val_bytes"])
            if self.val_bytes <= 0:
                raise ValueError(f"val_bytes is {self.val_bytes}")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{meta_path} is damaged ({e!r}); delete {data_dir} and prepare again") from None
        self.tokens = {}
        for split in self.SPLITS:
            path = os.path.join(data_dir, f"{split}.bin")
            if not os.path.isfile(path) or os.path.getsize(path) != expected[split] * dtype.itemsize:
                raise UserError(f"{path} is missing or not the size meta.json says; delete {data_dir} "
                                f"and prepare again")
            if expected[split] == 0:
                raise UserError(f"{path} holds no tokens: the {split} split is empty; add data or change "
                                f"val_fraction, then prepare again")
            self.tokens[split] = np.memmap(path, dtype=dtype, mode="r")

    def check_fits(self, seq_len, vocab_size):
        for split, tokens in self.tokens.items():
            if len(tokens) < seq_len + 1:
                raise UserError(f"seq_len {seq_len} is larger than the {split} split "
                                f"({len(tokens)} tokens); lower seq_len or add data")
        if self.vocab_size > vocab_size:
            raise UserError(f"the data uses the {self.tokenizer_name} tokenizer "
                            f"({self.vocab_size} tokens) but the model's vocab_size is {vocab_size}")

    def batch(self, split, seed, step, batch_size, seq_len, *, micro_step=0, micro_steps=1, rank=0, ranks=1):
        """(inputs, targets), each (batch_size, seq_len) int64: rank `rank` of `ranks`' rows of
        micro-step `micro_step` of the step's micro_steps x ranks x batch_size windows."""
        tokens = self.tokens[split]
        rng = np.random.default_rng([seed, self.SPLITS[split], step])
        starts = rng.integers(0, len(tokens) - seq_len, size=micro_steps * ranks * batch_size)
        first = (micro_step * ranks + rank) * batch_size
        windows = tokens[starts[first:first + batch_size, None] + np.arange(seq_len + 1)].astype(np.int64)
        return windows[:, :-1], windows[:, 1:]


def random_batch(rng, batch_size, seq_len, vocab_size):
    """Inputs and next-token targets from one random (B, T+1) token array."""
    tokens = rng.integers(0, vocab_size, size=(batch_size, seq_len + 1))
    return tokens[:, :-1], tokens[:, 1:]
