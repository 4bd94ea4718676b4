"""Sources, nano2_prepare and the memory-mapped loader."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from engine.errors import UserError
from train import data as data_module
from train import prepare as prepare_module
from train.config import load_config
from train.data import TokenData
from train.prepare import prepare
from train.tokenizer import ByteTokenizer, get_tokenizer


def prepare_from(source, tmp_path, *extra):
    cfg = load_config(None, [f"--data={source}", f"--data_dir={tmp_path / 'out'}", *extra])
    return prepare(cfg, workers=1, quiet=True)


def test_stories_prepare_writes_bins_and_meta(stories_dir):
    with open(os.path.join(stories_dir, "meta.json")) as f:
        meta = json.load(f)
    assert meta["tokenizer"] == "byte" and meta["vocab_size"] == 256 and meta["dtype"] == "uint8"
    assert meta["train_documents"] == 285 and meta["val_documents"] == 15
    train = np.fromfile(os.path.join(stories_dir, "train.bin"), dtype=np.uint8)
    assert len(train) == meta["train_tokens"] == meta["train_bytes"] + meta["train_documents"]
    assert (train == ByteTokenizer.eot).sum() == meta["train_documents"] and train[0] == ByteTokenizer.eot
    text = ByteTokenizer().decode(train[:2000])
    assert text.startswith("<|endoftext|>") and '"' in text


def test_a_second_prepare_does_nothing(tmp_path, capsys):
    out = prepare_from("stories", tmp_path, "--num_stories=40")
    stamp = os.stat(os.path.join(out, "train.bin")).st_mtime_ns
    prepare(load_config(None, ["--num_stories=40", f"--data_dir={out}"]), workers=1)
    assert "up to date" in capsys.readouterr().out
    assert os.stat(os.path.join(out, "train.bin")).st_mtime_ns == stamp
    prepare(load_config(None, ["--num_stories=41", f"--data_dir={out}"]), workers=1, quiet=True)
    assert os.stat(os.path.join(out, "train.bin")).st_mtime_ns != stamp, "new inputs must re-prepare"


def test_parallel_workers_give_the_same_bytes(tmp_path):
    one = prepare(load_config(None, ["--num_stories=600", f"--data_dir={tmp_path / 'a'}"]), workers=1, quiet=True)
    two = prepare(load_config(None, ["--num_stories=600", f"--data_dir={tmp_path / 'b'}"]), workers=2, quiet=True)
    for split in ("train.bin", "val.bin"):
        assert open(os.path.join(one, split), "rb").read() == open(os.path.join(two, split), "rb").read()


def test_tinystories_txt_files_with_a_validation_file(tmp_path):
    folder = tmp_path / "ts"
    folder.mkdir()
    (folder / "TinyStories-train.txt").write_text("One day a cat sat.\n<|endoftext|>\nTom ran home.\n<|endoftext|>\n")
    (folder / "TinyStories-valid.txt").write_text("Lily smiled.<|endoftext|>")
    (folder / "notes.md").write_text("ignored")
    out = prepare_from(str(folder), tmp_path)
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert (meta["train_documents"], meta["val_documents"]) == (2, 1)
    val = np.fromfile(os.path.join(out, "val.bin"), dtype=np.uint8)
    assert ByteTokenizer().decode(val) == "<|endoftext|>Lily smiled."


def test_a_token_past_the_bytes_decodes_as_a_replacement_character():
    """A byte model's vocabulary may be padded past 256 (an imported GPT-2's of 320, say)."""
    assert ByteTokenizer().decode([72, 105, 300, 33]) == "Hi\ufffd!"


def test_jsonl_and_parquet_with_a_text_column(tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    rows = [{"text": f"Story number {i}.", "id": i} for i in range(20)]
    (folder / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["From parquet."] * 5}), folder / "b.parquet")
    out = prepare_from(str(folder), tmp_path, "--val_fraction=0.2")
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["train_documents"] + meta["val_documents"] == 25 and meta["val_documents"] == 5


def test_plain_txt_is_one_document(tmp_path):
    (tmp_path / "book.txt").write_text("A whole book.\n\nWith paragraphs.")
    (tmp_path / "book-val.txt").write_text("Held out.")
    meta = json.load(open(os.path.join(prepare_from(str(tmp_path), tmp_path), "meta.json")))
    assert (meta["train_documents"], meta["val_documents"]) == (1, 1)


def write(path, content):
    """Create `path` (and its folder) holding `content`; returns the path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


BAD_SOURCES = {
    "missing file": (lambda p: str(p / "nope.txt"), "no such file or folder"),
    "empty file": (lambda p: write(p / "e.txt", ""), "is empty"),
    "blank file": (lambda p: write(p / "b.txt", " \n<|endoftext|>\n"), "holds no text"),
    "folder with no usable files": (lambda p: write(p / "d" / "x.csv", "a") and str(p / "d"), "has no usable files"),
    "jsonl without text": (lambda p: write(p / "t.jsonl", '{"story": "hi"}\n{"story": "yo"}\n'),
                           "has no 'text' column (columns: story)"),
    "invalid utf-8": (lambda p: write(p / "bad.txt", b"good start \xff\xfe bad"),
                      "invalid UTF-8 at byte 11; the file was not used and nothing was written"),
    "unsupported type": (lambda p: write(p / "x.csv", "a,b"), "unsupported file type"),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_bad_sources_give_one_clear_line(case, tmp_path, capsys):
    from train.cli import run_main
    make, message = BAD_SOURCES[case]
    source = make(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: prepare_module.main([f"--data={source}", f"--data_dir={tmp_path / 'out'}"]), "nano2_prepare")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out" / "meta.json").exists()


def test_tinystories_offline_fails_at_once(tmp_path, monkeypatch):
    """With no route to the Hub, `datasets` must run in offline mode (which fails at once when
    nothing is cached, instead of retrying for a minute) and the error must name the alternatives."""
    import datasets
    import huggingface_hub
    monkeypatch.setattr(data_module, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-hf-home" / "datasets"))
    real_load = datasets.load_dataset
    offline_during_load = []

    def load_dataset(*args, **kwargs):
        offline_during_load.append(datasets.config.HF_HUB_OFFLINE and huggingface_hub.constants.HF_HUB_OFFLINE)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    was = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    with pytest.raises(UserError, match="--data=stories"):
        prepare_from("tinystories", tmp_path)
    assert offline_during_load == [True]
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == was, "restored"


def test_gpt2_tokenizer_without_bpe_files_says_how_to_fix_it(tmp_path, monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(UserError, match="TIKTOKEN_CACHE_DIR"):
        get_tokenizer("gpt2")


def test_gpt2_tokenizer_wraps_tiktoken():
    """In a process of its own: after NVRTC has been loaded into the test process (the CUDA
    compile checks), tiktoken's Rust core panicked on this small stand-in encoding."""
    code = textwrap.dedent("""
        import numpy as np, tiktoken
        from train.tokenizer import get_tokenizer
        small = tiktoken.Encoding(name="small", pat_str=r"[\\s\\S]",  # one byte a piece
                                  mergeable_ranks={bytes([i]): i for i in range(256)},
                                  special_tokens={"<|endoftext|>": 50256})
        tiktoken.get_encoding = lambda name: small  # stands in for GPT-2's BPE files, not fetchable here
        tokenizer = get_tokenizer("gpt2")
        tokens = tokenizer.encode("hi there")
        assert tokens.dtype == np.uint16 and tokenizer.eot == 50256
        assert tokenizer.decode([tokenizer.eot, *tokens]) == "<|endoftext|>hi there"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


def test_batches_are_a_function_of_seed_and_step(stories_dir):
    data = TokenData(stories_dir)
    a = data.batch("train", 1, 5, 4, 16)
    b = data.batch("train", 1, 5, 4, 16)
    c = data.batch("train", 1, 6, 4, 16)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(a[0][:, 1:], a[1][:, :-1])
    assert a[0].dtype == np.int64 and a[0].shape == (4, 16)


def test_ranks_and_micro_steps_split_one_global_batch(stories_dir):
    data = TokenData(stories_dir)
    whole = data.batch("train", 3, 7, 8, 16)[0]
    ranks = [data.batch("train", 3, 7, 4, 16, rank=r, ranks=2)[0] for r in range(2)]
    micro = [data.batch("train", 3, 7, 4, 16, micro_step=m, micro_steps=2)[0] for m in range(2)]
    np.testing.assert_array_equal(np.concatenate(ranks), whole)
    np.testing.assert_array_equal(np.concatenate(micro), whole)


def test_seq_len_longer_than_validation_split_is_refused(tmp_path):
    (tmp_path / "t.txt").write_text("x" * 500)
    (tmp_path / "t-val.txt").write_text("short")
    data = TokenData(prepare_from(str(tmp_path), tmp_path))
    with pytest.raises(UserError, match="seq_len 64 is larger than the val split"):
        data.check_fits(64, 256)


def test_damaged_prepared_folder_is_refused(tmp_path, stories_dir):
    with pytest.raises(UserError, match="no prepared data"):
        TokenData(str(tmp_path))
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(stories_dir, copy)
    with open(copy / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match="not the size meta.json says"):
        TokenData(str(copy))


def test_val_fraction_that_leaves_no_training_documents_is_refused(tmp_path):
    (tmp_path / "two.txt").write_text("one story.\n<|endoftext|>\nanother story.\n")
    with pytest.raises(UserError, match="leaves none to train on"):
        prepare_from(str(tmp_path / "two.txt"), tmp_path, "--val_fraction=0.9")
    assert not (tmp_path / "out" / "meta.json").exists()


def test_data_dir_that_cannot_be_a_folder_is_refused(tmp_path):
    (tmp_path / "t.txt").write_text("x" * 500)
    (tmp_path / "t-val.txt").write_text("y" * 500)
    (tmp_path / "taken").write_text("a file, not a folder")
    cfg = load_config(None, [f"--data={tmp_path}", f"--data_dir={tmp_path / 'taken'}"])
    with pytest.raises(UserError, match="--data_dir=.*taken: cannot make this folder"):
        prepare(cfg, workers=1, quiet=True)


def test_meta_json_missing_a_key_is_refused(tmp_path, stories_dir):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(stories_dir, copy)
    meta = json.loads((copy / "meta.json").read_text())
    del meta["val_tokens"]
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="meta.json is damaged .*val_tokens"):
        TokenData(str(copy))


@pytest.mark.parametrize("damage", ["a list", "no validation bytes"])
def test_meta_json_of_the_wrong_shape_is_refused(tmp_path, stories_dir, damage):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(stories_dir, copy)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps([meta] if damage == "a list" else meta | {"val_bytes": 0}))
    if damage == "a list":
        assert not prepare_module.is_prepared(str(copy), meta["source_hash"], meta["tokenizer"])
    with pytest.raises(UserError, match="meta.json is damaged"):
        TokenData(str(copy))


def test_meta_json_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "t.txt").write_text("x" * 500)
    (tmp_path / "t-val.txt").write_text("y" * 500)
    (tmp_path / "out" / "meta.json").mkdir(parents=True)
    cfg = load_config(None, [f"--data={tmp_path}", f"--data_dir={tmp_path / 'out'}"])
    with pytest.raises(UserError, match="meta.json is a folder"):
        prepare(cfg, workers=1, quiet=True)


def test_data_dir_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    import train.cli

    def refused(dir):
        raise PermissionError(13, "Permission denied")
    (tmp_path / "t.txt").write_text("x" * 500)
    (tmp_path / "t-val.txt").write_text("y" * 500)
    monkeypatch.setattr(train.cli.tempfile, "TemporaryFile", refused)
    cfg = load_config(None, [f"--data={tmp_path}", f"--data_dir={tmp_path / 'out'}"])
    with pytest.raises(UserError, match="--data_dir=.*out: cannot write in this folder \\(Permission denied\\)"):
        prepare(cfg, workers=1, quiet=True)


def test_an_up_to_date_folder_is_known_without_reading_the_documents(tmp_path, monkeypatch):
    (tmp_path / "t.txt").write_text("one story.\n<|endoftext|>\nanother.\n<|endoftext|>\na third.\n")
    prepare_from(str(tmp_path / "t.txt"), tmp_path)

    def unread(path):
        raise AssertionError(f"{path} was parsed again, though its hash had not changed")
    monkeypatch.setattr(data_module, "read_documents", unread)
    assert prepare_from(str(tmp_path / "t.txt"), tmp_path) == str(tmp_path / "out")
