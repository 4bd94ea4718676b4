"""Bad configs and bad flags end with one clear line on stderr and exit status 2."""
import json
import subprocess
import sys

import pytest

from train import debug, gradcheck
from train.cli import run_main
from train.config import load_config
from train.model_setup import build_model


def run(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(argv), "nano2_test")
    err = capsys.readouterr().err
    return exit_info.value.code, err


def write_config(tmp_path, values):
    path = tmp_path / "c.json"
    path.write_text(values if isinstance(values, str) else json.dumps(values))
    return str(path)


BAD_CONFIGS = {
    "unknown key": ({"d_model": 64, "n_layers": 2}, "unknown config key 'n_layers'"),
    "wrong type": ({"d_model": "big"}, "d_model must be an integer"),
    "float for an int": ({"n_head": 2.5}, "n_head must be an integer"),
    "bool for an int": ({"n_layer": True}, "n_layer must be an integer"),
    "heads do not divide": ({"d_model": 100, "n_head": 3}, "d_model (100) must be divisible by n_head (3)"),
    "zero size": ({"d_ff": 0}, "d_ff must be positive"),
    "negative size": ({"seq_len": -4}, "seq_len must be positive"),
    "no time for a collective": ({"comm_timeout": 0}, "comm_timeout must be positive"),
    "unknown CUDA-aware choice": ({"cuda_aware_mpi": "maybe"}, "cuda_aware_mpi must be one of auto, yes, no"),
    "no such ZeRO stage": ({"zero": 2}, "zero must be 0 (every rank holds all of AdamW's state) or 1"),
    "bad dtype": ({"dtype": "float16"}, "dtype must be one of"),
    "unknown positions": ({"positions": "rotary2"}, "positions must be one of sinusoidal, learned"),
    "unknown activation": ({"activation": "tanh"}, "activation must be one of gelu, relu2, got 'tanh'"),
    "unknown norm": ({"norm": "batchnorm"}, "norm must be one of layernorm, rmsnorm, got 'batchnorm'"),
    "unknown optimizer": ({"optimizer": "sgd"}, "optimizer must be one of adamw, muon, got 'sgd'"),
    "Muon at no rate": ({"optimizer": "muon", "muon_lr": 0}, "muon_lr must be positive, got 0.0"),
    "negative head rate": ({"head_lr": -0.1}, "head_lr must not be negative, got -0.1"),
    "Muon under ZeRO-1": ({"optimizer": "muon", "zero": 1}, "optimizer muon needs each matrix's whole gradient"),
    "rotary with odd heads": ({"positions": "rotary", "d_model": 9, "n_head": 3},
                              "rotary positions turn pairs of dimensions, so heads need an even size"),
    "qk_norm of one-number heads": ({"qk_norm": True, "d_model": 8, "n_head": 8},
                                    "qk_norm needs heads of 2 or more dimensions (d_model / n_head is 1)"),
    "bad device": ({"device": "tpu"}, "device must be one of"),
    "not json": ("{d_model: 64", "is not valid JSON"),
    "not an object": ("[1, 2]", "must hold a JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_files(case, tmp_path, capsys):
    values, message = BAD_CONFIGS[case]
    code, err = run(gradcheck.main, ["--config", write_config(tmp_path, values)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


BAD_FLAGS = {
    "missing config file": (["--config", "no/such.json"], "config file not found"),
    "unknown override": (["--bogus=3"], "unknown option or config key --bogus"),
    "override of wrong type": (["--n_layer=two"], "n_layer must be an integer"),
    "override that breaks validation": (["--n_head=3"], "must be divisible by n_head"),
    "override without value": (["--d_model"], "--d_model needs a value"),
    "stray word": (["hello"], "unrecognised argument 'hello'"),
    "command flag of wrong type": (["--samples", "many"], "--samples must be an integer, got 'many'"),
    "bad choice": (["--dtype", "int8"], "invalid choice"),
    "non-positive batch": (["--batch-size", "0"], "--batch-size must be positive"),
    "zero finite-difference step": (["--eps", "0"], "--eps must be positive"),
    "NaN for a number": (["--lr=nan"], "lr must be a finite number, got nan"),
    "negative seed": (["--seed=-1"], "seed must not be negative, got -1"),
    "infinity for a number": (["--grad_clip=inf"], "grad_clip must be a finite number, got inf"),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flags(case, capsys):
    argv, message = BAD_FLAGS[case]
    code, err = run(gradcheck.main, argv, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_gpu_without_cupy_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cupy", None)  # the same here and on a machine with CuPy and a GPU
    code, err = run(gradcheck.main, ["--device=gpu"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "no GPU: CuPy is not installed" in err and "--device=cpu" in err, err


@pytest.mark.parametrize("argv, message", [
    ([], "required: command"),
    (["state"], "required: --out"),
    (["state", "--out", "x.safetensors", "--seq-len", "0"], "seq_len must be positive"),
    (["explode"], "invalid choice"),
    (["nonfinite", "--data_dir=/no/such/folder"], "holds no prepared data"),
    (["step", "--break", "blocks.0.atn:forward"], "--break blocks.0.atn:forward: no such layer and phase"),
])
def test_bad_debug_flags(argv, message, capsys):
    code, err = run(debug.main, argv, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_overrides_apply_in_both_spellings():
    cfg = load_config("configs/tiny.json", ["--d_model=64", "--n-head", "2", "--dtype=float64"])
    assert (cfg.d_model, cfg.n_head, cfg.dtype, cfg.n_layer) == (64, 2, "float64", 4)


def test_shipped_configs_load():
    sizes = {"tiny": (128, 4, 4, 512, 128), "nano2": (384, 6, 6, 1536, 256),
             "gpt2-small": (768, 12, 12, 3072, 1024)}
    for name, expected in sizes.items():
        cfg = load_config(f"configs/{name}.json")
        assert (cfg.d_model, cfg.n_layer, cfg.n_head, cfg.d_ff, cfg.seq_len) == expected


def test_console_script_exits_2_with_one_line():
    result = subprocess.run([sys.executable, "-c", "from train.gradcheck import entry; entry()",
                             "--config", "configs/tiny.json", "--n_head=5"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == ("nano2_gradcheck: error: config: d_model (128) must be "
                                     "divisible by n_head (5)")


def test_gpu_head_size_the_kernels_lack_is_refused_before_the_model_is_built(capsys):
    """Head size 16 (tiny with 8 heads) would otherwise reach the GPU kernels' launch and end in
    a traceback; it must end in one line, found before any CuPy is needed."""
    cfg = load_config("configs/tiny.json", ["--n_head=8", "--device=gpu"])
    status, err = run(lambda argv: build_model(cfg), [], capsys)
    assert status == 2
    assert err.strip().splitlines() == [
        "nano2_test: error: config: the GPU attention kernels take head sizes (d_model / n_head) 32, 64, 128, not 16"]


def test_running_out_of_memory_is_one_line(capsys):
    def main():
        raise MemoryError("Unable to allocate 93.9 TiB for an array with shape (100000000000, 129)")
    with pytest.raises(SystemExit) as exit:
        run_main(main, "nano2_train")
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "out of memory" in err and "smaller batch_size" in err, err
