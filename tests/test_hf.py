"""nano2_export and nano2_import against transformers' own GPT-2: an export computes nano2's logits
in GPT2LMHeadModel, a GPT-2 made by transformers computes its logits, loss and gradients in nano2
(llm.c's test_gpt2, against the real GPT-2 code), export after import gives back its tensors, and
what nano2 cannot represent is refused in one line."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import fields

import numpy as np
import pytest
from helpers import relative_difference, run_command
from safetensors.numpy import save_file

from engine.params import read_safetensors, write_safetensors
from layers.model import Decoder, ModelConfig, init_parameters
from train import hf, trainer
from train.checkpoint import read_any_checkpoint, save_checkpoint
from train.cli import run_main
from train.config import CHOICES, Config, config_from_dict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}  # logits, relative
GRAD_TOLERANCE = 1e-8  # float64, per tensor
SMALL = {"vocab_size": 256, "d_model": 32, "n_layer": 2, "n_head": 2, "d_ff": 48, "seq_len": 16}
GPT2_SMALL = {"vocab_size": 320, "n_positions": 24, "n_embd": 32, "n_layer": 2, "n_head": 4, "bos_token_id": 0,
              "eos_token_id": 0, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
NANO2_INPUT = {"positions": "sinusoidal", "scale_embedding": True}
GPT2_INPUT = {"positions": "learned", "scale_embedding": False}


def nano2_checkpoint(path, dtype, options, seed=0):
    """A checkpoint of a small nano2 model, every parameter (LayerNorms and biases too) drawn at random."""
    cfg = Config(**SMALL, **options, dtype=dtype)
    model = Decoder(cfg, np.dtype(dtype))
    init_parameters(model.store, cfg.n_layer, seed)
    model.store.data += np.random.default_rng(seed).normal(0, 0.02, model.store.numel)
    save_checkpoint(path, model, {}, cfg, {"step": 3, "best_val_loss": 5.0})
    return path


def nano2_model(ckpt):
    tensors, metadata = read_any_checkpoint(ckpt)
    cfg = config_from_dict(metadata["config"], ckpt)
    model = Decoder(cfg, np.dtype(cfg.dtype))
    model.store.load_tensors(tensors, ckpt)
    return model


def gpt2_folder(path, dtype="float64", **overrides):
    """A random GPT2LMHeadModel made by transformers, every parameter moved off its init, saved as
    save_pretrained writes it; returns the model."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**GPT2_SMALL, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.to(getattr(torch, dtype)).save_pretrained(path)
    return model


def tokens(vocab_size, batch, length, seed=1):
    return np.random.default_rng(seed).integers(0, vocab_size, (batch, length))


def hf_logits(model, idx):
    with torch.no_grad():
        return model(torch.from_numpy(idx)).logits.numpy()


def folder_tensors(folder):
    return read_safetensors(os.path.join(folder, "model.safetensors"))[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("options, tied", [(NANO2_INPUT, False), (GPT2_INPUT, True),
                                           ({**GPT2_INPUT, "bias": False}, True)], ids=["nano2", "gpt2", "no-bias"])
def test_export_logits_equal_nano2s(tmp_path, capsys, dtype, options, tied):
    ckpt = nano2_checkpoint(tmp_path / "model.safetensors", dtype, options)
    out = tmp_path / "exported"
    out.mkdir()  # an empty folder is taken over
    status, stdout, _ = run_command(hf.export_main, ["--ckpt", str(ckpt), "--out", str(out)], "nano2_export", capsys)
    assert status == 0 and ("tied head" if tied else "untied head") in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied and ("lm_head.weight" in folder_tensors(out)) is not tied
    assert config["n_positions"] == SMALL["seq_len"] and config["n_inner"] == SMALL["d_ff"]
    assert config["bos_token_id"] == config["eos_token_id"] == 0 and "UTF-8 byte" in (out / "README.md").read_text()
    model, info = transformers.GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert model.dtype == getattr(torch, dtype)
    assert all(not keys for keys in (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]))
    idx = tokens(SMALL["vocab_size"], 3, SMALL["seq_len"])
    err = relative_difference(hf_logits(model, idx), nano2_model(ckpt).forward(idx)[0])
    print(f"export {options} {dtype}: logits relative error {err:.2e}")
    assert err <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_imported_gpt2_gives_transformers_logits_loss_and_gradients(tmp_path, capsys, dtype):
    gpt2 = gpt2_folder(tmp_path / "gpt2", dtype)
    ckpt = tmp_path / "imported.safetensors"
    status, stdout, _ = run_command(hf.import_main, ["--hf", str(tmp_path / "gpt2"), "--out", str(ckpt)],
                                    "nano2_import", capsys)
    assert status == 0 and "tokenizer byte" in stdout
    cfg = read_any_checkpoint(ckpt)[1]["config"]
    assert (cfg["positions"], cfg["scale_embedding"], cfg["seq_len"], cfg["d_ff"]) == ("learned", False, 24, 128)
    model = nano2_model(ckpt)
    idx, targets = tokens(GPT2_SMALL["vocab_size"], 3, 24), tokens(GPT2_SMALL["vocab_size"], 3, 24, seed=2)
    logits, loss = model.forward(idx, targets)
    model.backward()

    torch_logits = gpt2(torch.from_numpy(idx)).logits
    torch_loss = torch.nn.functional.cross_entropy(torch_logits.flatten(0, 1), torch.from_numpy(targets).flatten())
    torch_loss.backward()
    logits_err = relative_difference(logits, torch_logits.detach().numpy())
    loss_err = abs(float(loss) - torch_loss.item()) / torch_loss.item()
    # transformers' own loss with labels shifts them: nano2's on idx[:, :-1] predicting idx[:, 1:]. It
    # casts the logits to float32 first (transformers/loss/loss_utils.py), so it holds to float32's tolerance.
    shifted_loss = gpt2(torch.from_numpy(idx), labels=torch.from_numpy(idx)).loss.item()
    shifted_err = abs(float(model.forward(idx[:, :-1], idx[:, 1:])[1]) - shifted_loss) / shifted_loss
    print(f"import {dtype}: logits {logits_err:.2e}, loss {loss_err:.2e}, labels loss {shifted_err:.2e}")
    assert max(logits_err, loss_err) <= TOLERANCE[dtype] and shifted_err <= TOLERANCE["float32"]
    if dtype == "float32":
        return
    torch_params = dict(gpt2.named_parameters())
    grad_errors = {name: relative_difference(grad, torch_params[hf.PREFIX + hf.gpt2_name(name)].grad.numpy())
                   for name, grad in model.store.grads.items()}
    print(f"import float64: gradients, worst tensor {max(grad_errors, key=grad_errors.get)} "
          f"{max(grad_errors.values()):.2e}")
    assert max(grad_errors.values()) <= GRAD_TOLERANCE, grad_errors


def test_other_names_of_the_same_function_are_accepted(tmp_path, capsys):
    """gelu_pytorch_tanh is gelu_new; reorder_and_upcast_attn only reorders (transformers' eager path
    takes it, in float32 alone: it refuses float64)."""
    gpt2_folder(tmp_path / "gpt2", "float32", activation_function="gelu_pytorch_tanh", reorder_and_upcast_attn=True)
    ckpt = tmp_path / "imported.safetensors"
    argv = ["--hf", str(tmp_path / "gpt2"), "--out", str(ckpt)]
    assert run_command(hf.import_main, argv, "nano2_import", capsys)[0] == 0
    gpt2 = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2", attn_implementation="eager")
    idx = tokens(GPT2_SMALL["vocab_size"], 2, 24)
    assert relative_difference(nano2_model(ckpt).forward(idx)[0], hf_logits(gpt2, idx)) <= TOLERANCE["float32"]


def test_gpt2s_vocabulary_reads_its_bpe_and_float16_widens(tmp_path, capsys):
    gpt2 = gpt2_folder(tmp_path / "gpt2", "float16", vocab_size=50257, n_embd=8, n_head=2, n_layer=1,
                       bos_token_id=50256, eos_token_id=50256)
    ckpt, out = tmp_path / "imported.safetensors", tmp_path / "exported"
    argv = ["--hf", str(tmp_path / "gpt2"), "--out", str(ckpt)]
    assert run_command(hf.import_main, argv, "nano2_import", capsys)[0] == 0
    tensors, metadata = read_any_checkpoint(ckpt)
    assert metadata["config"]["tokenizer"] == "gpt2" and metadata["config"]["dtype"] == "float32"
    wte = gpt2.transformer.wte.weight.detach().half().float().numpy()
    assert tensors["tok_emb.weight"].dtype == np.float32 and np.array_equal(tensors["tok_emb.weight"], wte)
    assert run_command(hf.export_main, ["--ckpt", str(ckpt), "--out", str(out)], "nano2_export", capsys)[0] == 0
    config = json.loads((out / "config.json").read_text())
    assert config["bos_token_id"] == config["eos_token_id"] == 50256 and "BPE" in (out / "README.md").read_text()


def hub_layout(folder):
    """The layout of GPT-2's own files (openai-community/gpt2): GPT2Model's names without the
    transformer. prefix, and the causal mask buffers older transformers saved."""
    tensors = {name.removeprefix(hf.PREFIX): t for name, t in folder_tensors(folder).items()}
    for i in range(GPT2_SMALL["n_layer"]):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 24, 24), np.float32))
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    os.remove(os.path.join(folder, "model.safetensors"))
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("layout", ["single", "sharded", "hub"])
def test_export_after_import_gives_the_original_tensors(tmp_path, capsys, layout):
    model = gpt2_folder(tmp_path / "original", "float32")
    source = tmp_path / layout
    if layout == "sharded":
        model.save_pretrained(source, max_shard_size="50KB")
        assert (source / "model.safetensors.index.json").exists() and not (source / "model.safetensors").exists()
    else:
        shutil.copytree(tmp_path / "original", source)
        if layout == "hub":
            hub_layout(source)
    ckpt, out = tmp_path / "imported.safetensors", tmp_path / "exported"
    assert run_command(hf.import_main, ["--hf", str(source), "--out", str(ckpt)], "nano2_import", capsys)[0] == 0
    assert run_command(hf.export_main, ["--ckpt", str(ckpt), "--out", str(out)], "nano2_export", capsys)[0] == 0
    original, exported = folder_tensors(tmp_path / "original"), folder_tensors(out)
    assert sorted(original) == sorted(exported)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name
    config, original_config = (json.loads((f / "config.json").read_text()) for f in (out, tmp_path / "original"))
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "tie_word_embeddings"):
        assert config[key] == original_config[key], key


def edit_config(**changes):
    def edit(folder):
        path = folder / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return edit


def edit_tensors(edit_dict):
    def edit(folder):
        import safetensors.torch  # torch's reader, for bfloat16; imported once the module knows torch is here
        tensors = safetensors.torch.load_file(folder / "model.safetensors")
        edit_dict(tensors)
        safetensors.torch.save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return edit


def replace_tensor(name, value_of):
    return edit_tensors(lambda tensors: tensors.update({name: value_of(tensors)}))


LN_BIAS = "transformer.h.0.ln_1.bias"


def short_head(tensors):
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"][1:].clone()


def only_pytorch_bin(folder):
    os.remove(folder / "model.safetensors")
    (folder / "pytorch_model.bin").write_bytes(b"not read")


REFUSED_FOLDERS = {
    "llama": (edit_config(model_type="llama"), "model_type is 'llama'; nano2_import reads GPT-2 models only"),
    "relu": (edit_config(activation_function="relu"),
             "activation_function 'relu' is not nano2's tanh GELU (gelu_new or gelu_pytorch_tanh)"),
    "scale by layer": (edit_config(scale_attn_by_inverse_layer_idx=True),
                       "scale_attn_by_inverse_layer_idx is true, but nano2 scales every layer's attention scores"),
    "unscaled attention": (edit_config(scale_attn_weights=False), "scale_attn_weights is false"),
    "cross-attention": (edit_config(add_cross_attention=True), "add_cross_attention is true"),
    "eps": (edit_config(layer_norm_epsilon=1e-6), "layer_norm_epsilon is 1e-06, but nano2's LayerNorm has 1e-05"),
    "misshapen head": (lambda f: (edit_config(tie_word_embeddings=False)(f), edit_tensors(short_head)(f)),
                       "lm_head.weight has shape (319, 32), but config.json's sizes make it (320, 32)"),
    "no head": (edit_config(tie_word_embeddings=False), "tie_word_embeddings is false but there is no lm_head.weight"),
    "missing": (edit_tensors(lambda t: t.pop("transformer.h.1.mlp.c_fc.bias")),
                "no tensor transformer.h.1.mlp.c_fc.bias; not a whole GPT-2 model"),
    "misshapen": (replace_tensor(LN_BIAS, lambda t: t[LN_BIAS][:-1]),
                  f"{LN_BIAS} has shape (31,), but config.json's sizes make it (32,)"),
    "extra": (replace_tensor("transformer.h.0.attn.q_attn.weight", lambda t: t[LN_BIAS].clone()),
              "tensor transformer.h.0.attn.q_attn.weight is not part of a GPT-2 that nano2 can represent"),
    "bfloat16": (replace_tensor(LN_BIAS, lambda t: t[LN_BIAS].bfloat16()),
                 f"tensor {LN_BIAS} is BF16, which NumPy cannot hold; save it as float32"),
    "integer weights": (replace_tensor(LN_BIAS, lambda t: t[LN_BIAS].to(torch.int32)),
                        f"tensor {LN_BIAS} is int32; nano2_import reads float32, float64 and float16"),
    "pytorch_model.bin": (only_pytorch_bin, ("holds pytorch_model.bin but no model.safetensors, and nano2_import "
                                             "reads safetensors only; convert it once with transformers: "
                                             "GPT2LMHeadModel.from_pretrained(DIR).save_pretrained(NEW_DIR)")),
    "corrupt": (lambda f: (f / "model.safetensors").write_bytes(b"\x08"), "is not a readable safetensors file"),
    "no config": (lambda f: os.remove(f / "config.json"), "has no config.json: not a transformers model folder"),
    "sizes": (edit_config(n_embd="32"), 'n_embd must be a positive integer, got "32"'),
}


@pytest.fixture(scope="module")
def good_gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good") / "gpt2"
    gpt2_folder(folder, "float32")
    return folder


def assert_refused(main, argv, prog, message, out_dir, capsys):
    """The command ends with status 2 and one line holding `message`, and writes nothing into out_dir."""
    before = sorted(os.listdir(out_dir))
    status, stdout, stderr = run_command(main, argv, prog, capsys)
    assert status == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith(f"{prog}: error: ") and message in stderr, stderr
    assert sorted(os.listdir(out_dir)) == before, "nothing may be written"
    print(stderr.strip())


@pytest.mark.parametrize("case", REFUSED_FOLDERS)
def test_import_refuses_what_nano2_cannot_represent(good_gpt2, tmp_path, capsys, case):
    edit, message = REFUSED_FOLDERS[case]
    folder = tmp_path / "gpt2"
    shutil.copytree(good_gpt2, folder)
    edit(folder)
    argv = ["--hf", str(folder), "--out", str(tmp_path / "c.safetensors")]
    assert_refused(hf.import_main, argv, "nano2_import", message, tmp_path, capsys)


@pytest.mark.parametrize("argv, message", [
    (["--hf", "{tmp}/missing", "--out", "{tmp}/c.safetensors"], "--hf {tmp}/missing: no such folder"),
    (["--hf", "{good}", "--out", "{tmp}/c.safetensors", "--tokenizer", "gpt2"],
     "a vocabulary of 320 tokens cannot hold the gpt2 tokenizer's 50257"),
    (["--hf", "{good}", "--out", "{tmp}/c.safetensors", "--tokenizer", "words"], "invalid choice: 'words'"),
    (["--hf", "{good}", "--out", "{tmp}/taken"], "--out {tmp}/taken already exists; import into a new file"),
    (["--out", "{tmp}/c.safetensors"], "the following arguments are required: --hf"),
])
def test_import_bad_arguments(good_gpt2, tmp_path, capsys, argv, message):
    (tmp_path / "taken").write_text("mine")
    argv = [a.format(tmp=tmp_path, good=good_gpt2) for a in argv]
    assert_refused(hf.import_main, argv, "nano2_import", message.format(tmp=tmp_path), tmp_path, capsys)
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize("argv, message", [
    (["--ckpt", "{tmp}/missing.safetensors", "--out", "{tmp}/x"], "no such file: {tmp}/missing.safetensors"),
    (["--ckpt", "{tmp}/gpt2/model.safetensors", "--out", "{tmp}/x"],
     "gpt2/model.safetensors is not a nano2 checkpoint"),
    (["--ckpt", "{tmp}/damaged.safetensors", "--out", "{tmp}/x"], "has no tensor 'ln_f.bias'"),
    (["--ckpt", "{tmp}/good.safetensors", "--out", "{tmp}/gpt2"],
     "--out {tmp}/gpt2 already exists; export into a new or empty folder"),
    (["--ckpt", "{tmp}/good.safetensors", "--out", "{tmp}/good.safetensors"], "already exists as a file"),
    (["--ckpt", "{tmp}/good.safetensors"], "the following arguments are required: --out"),
])
def test_export_bad_input(good_gpt2, tmp_path, capsys, argv, message):
    shutil.copytree(good_gpt2, tmp_path / "gpt2")
    good = nano2_checkpoint(tmp_path / "good.safetensors", "float32", NANO2_INPUT)
    tensors, metadata = read_safetensors(good)
    tensors.pop("ln_f.bias")
    write_safetensors(tmp_path / "damaged.safetensors", tensors, metadata)
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert_refused(hf.export_main, argv, "nano2_export", message.format(tmp=tmp_path), tmp_path, capsys)


# Run in a Python without nano2: no site processing (so no editable install's finder), only the
# folders torch and transformers are installed in, another working directory, no PYTHONPATH.
FRESH_PYTHON = """
import importlib.util, json, sys
sys.path += {site}
assert all(importlib.util.find_spec(m) is None for m in ("engine", "layers", "train")), "nano2 is importable"
import torch
from transformers import GPT2LMHeadModel
model = GPT2LMHeadModel.from_pretrained("exported")
with torch.no_grad():
    print(json.dumps(model(torch.tensor({idx})).logits.tolist()))
"""


def test_exported_tiny_checkpoint_loads_in_a_python_without_nano2(stories_dir, tmp_path):
    run_dir = tmp_path / "run"
    argv = ["--config", os.path.join(ROOT, "configs", "tiny.json"), "--num_stories=300", "--batch_size=2",
            "--max_steps=2", "--eval_interval=2", "--eval_iters=1", "--warmup_steps=1", f"--data_dir={stories_dir}",
            f"--out_dir={run_dir}"]
    assert run_main(lambda: trainer.main(argv), "nano2_train") == 0
    ckpt = run_dir / "ckpt-0000002.safetensors"
    export = os.path.join(os.path.dirname(sys.executable), "nano2_export")  # the installed command
    subprocess.run([export, "--ckpt", str(ckpt), "--out", str(tmp_path / "exported")], check=True)
    idx = tokens(256, 2, 128)
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    child = subprocess.run([sys.executable, "-S", "-c", FRESH_PYTHON.format(site=site, idx=idx.tolist())],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert child.returncode == 0, child.stderr
    logits = np.array(json.loads(child.stdout.splitlines()[-1]), np.float32)
    err = relative_difference(logits, nano2_model(ckpt).forward(idx)[0])
    print(f"configs/tiny.json export in a fresh Python: logits relative error {err:.2e}")
    assert err <= TOLERANCE["float32"]


def test_every_model_key_has_a_gpt2_counterpart():
    """train/hf.py maps these keys and values; a new one must be exported (or refused) there first."""
    assert [f.name for f in fields(ModelConfig)] == ["vocab_size", "d_model", "n_layer", "n_head", "d_ff", "seq_len",
                                                     "positions", "rope_base", "scale_embedding", "activation", "norm",
                                                     "bias", "tie_head", "zero_init_proj", "qk_norm"]
    assert CHOICES["positions"] == ("sinusoidal", "learned", "rotary")  # rotary refused by check_exportable
    assert CHOICES["activation"] == ("gelu", "relu2")  # relu2 refused by check_exportable
    assert CHOICES["norm"] == ("layernorm", "rmsnorm")  # rmsnorm refused by check_exportable
    # bias=false is exported with zero biases (export_tensors), which GPT-2 computes exactly; an untied
    # head as lm_head; zero_init_proj is only where training starts


@pytest.mark.parametrize("option, said", [
    ({"activation": "relu2"}, "its MLP's activation is relu2, and GPT-2's format holds the tanh GELU alone "
                              "(activation_function gelu_new)"),
    ({"norm": "rmsnorm"}, "it normalises with rmsnorm, and GPT-2's format holds LayerNorms alone"),
    ({"qk_norm": True}, "it normalises each head's q and k (qk_norm), which GPT-2's attention does not"),
    ({"positions": "rotary"}, "its positions are rotary, and GPT-2's format holds an added position table alone"),
])
def test_export_refuses_what_gpt2_cannot_hold(tmp_path, capsys, option, said):
    ckpt = nano2_checkpoint(tmp_path / "modded.safetensors", "float32", option)
    status, stdout, stderr = run_command(hf.export_main, ["--ckpt", str(ckpt), "--out", str(tmp_path / "out")],
                                         "nano2_export", capsys)
    assert status == 2 and stderr.strip() == f"nano2_export: error: {ckpt}: {said}"
    assert not (tmp_path / "out").exists()


def test_an_imported_model_samples_as_a_trained_one_does(good_gpt2, tmp_path, capsys):
    """nano2_sample's loading and KV-cached decoding of an imported GPT-2: transformers' greedy tokens."""
    from train import sample
    ckpt = tmp_path / "gpt2.safetensors"
    assert run_command(hf.import_main, ["--hf", str(good_gpt2), "--out", str(ckpt)], "nano2_import",
                       capsys)[0] == 0
    status, _, err = run_command(sample.main, ["--ckpt", str(ckpt), "--prompt", "Once", "--max-new-tokens", "6"],
                                 "nano2_sample", capsys)
    assert status == 0, err
    prompt = [0, *b"Once"]
    model, _ = sample.load_model(str(ckpt))
    ours = sample.generate(model, prompt, 6, 0.0, 0, np.random.default_rng(0))
    theirs = transformers.GPT2LMHeadModel.from_pretrained(good_gpt2).eval()
    with torch.no_grad():
        expected = theirs.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert ours == expected[0].tolist()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_untied_gpt2_head_is_imported_as_a_head_of_its_own(tmp_path, capsys, dtype):
    gpt2 = gpt2_folder(tmp_path / "gpt2", dtype, tie_word_embeddings=False)
    assert not np.array_equal(gpt2.lm_head.weight.detach().numpy(), gpt2.transformer.wte.weight.detach().numpy())
    ckpt, out = tmp_path / "imported.safetensors", tmp_path / "exported"
    status, stdout, _ = run_command(hf.import_main, ["--hf", str(tmp_path / "gpt2"), "--out", str(ckpt)],
                                    "nano2_import", capsys)
    assert status == 0 and "untied head" in stdout
    tensors, metadata = read_any_checkpoint(ckpt)
    assert metadata["config"]["tie_head"] is False
    np.testing.assert_array_equal(tensors["head.weight"], gpt2.lm_head.weight.detach().numpy())
    idx = tokens(GPT2_SMALL["vocab_size"], 2, 24)
    assert relative_difference(nano2_model(ckpt).forward(idx)[0], hf_logits(gpt2, idx)) <= TOLERANCE[dtype]
    assert run_command(hf.export_main, ["--ckpt", str(ckpt), "--out", str(out)], "nano2_export", capsys)[0] == 0
    original, exported = folder_tensors(tmp_path / "gpt2"), folder_tensors(out)
    assert sorted(original) == sorted(exported)
    assert all(np.array_equal(exported[name], tensor) for name, tensor in original.items())
