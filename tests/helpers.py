"""Shared by the tests: the MPI launcher, central finite differences in float64 (the same central_differences
and relative_error that nano2_gradcheck uses), how close a fast kernel must come to
engine/kernels/reference.py, and how close two training runs' parameters must come."""
import os
import subprocess
import sys

import numpy as np
import pytest

from engine.backend import to_numpy
from engine.params import read_safetensors
from train.cli import run_main
from train.finite_differences import central_differences, relative_error

KERNEL_TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}  # relative, against the reference
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # the mpich wheel's launcher
needs_mpiexec = pytest.mark.skipif(not os.path.exists(MPIEXEC), reason="no mpiexec next to this Python")

EPS = 1e-5
TOLERANCE = 1e-6


def numeric_grad(f, x, eps=EPS):
    """d f() / d x by central differences over every entry, perturbing `x` in place."""
    return central_differences(f, x.reshape(-1), range(x.size), eps).reshape(x.shape)


def kernel_error(got, expected, scale=0.0):
    """|got - expected| relative to |expected|, or to `scale` where the exact answer is (nearly)
    zero and both sides hold only rounding; host or device arrays."""
    got, expected = (np.asarray(to_numpy(a), np.float64) for a in (got, expected))
    return np.linalg.norm(got - expected) / max(np.linalg.norm(expected), scale, 1e-300)


def assert_kernel_close(got, expected, dtype, name="", scale=0.0):
    err = kernel_error(got, expected, scale)
    assert err <= KERNEL_TOLERANCE[dtype], f"{name}: relative error {err:.2e}"


def assert_grad_close(analytic, f, x, name="", tol=TOLERANCE):
    numeric = numeric_grad(f, x)
    err = relative_error(np.asarray(analytic, dtype=np.float64), numeric)
    assert np.linalg.norm(numeric) > 0, f"{name}: the numeric gradient is zero, so the check says nothing"
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:g}"
    return err


def run_command(main, argv, prog, capsys):
    """(exit status, stdout, stderr) of a command's main(argv), as its entry point would end."""
    capsys.readouterr()
    try:
        status = run_main(lambda: main(argv), prog)
    except SystemExit as e:
        status = e.code
    out = capsys.readouterr()
    return status, out.out, out.err


def final_parameters(run_dir, step):
    tensors, _ = read_safetensors(os.path.join(run_dir, f"ckpt-{step:07d}.safetensors"))
    return {k: v for k, v in tensors.items() if not k.startswith("adam_")}


def relative_difference(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def assert_parameters_close(a, b, tol, per_tensor):
    """Per tensor, or over all parameters at once. float32 must use the latter: the key part
    of attn.qkv.bias has a true gradient of zero (softmax ignores a shift shared by every key),
    so its float32 gradient is rounding noise, which AdamW turns into steps of lr·g/eps; those
    entries differ between any two summation orders by as much as their size (~1e-7), while
    the parameters as a whole agree to ~6e-8."""
    assert set(a) == set(b)
    if per_tensor:
        for name in a:
            err = relative_difference(a[name], b[name])
            assert err <= tol, f"{name}: relative difference {err:.2e} > {tol:g}"
    else:
        err = relative_difference(np.concatenate([a[n].ravel() for n in sorted(a)]),
                                  np.concatenate([b[n].ravel() for n in sorted(a)]))
        assert err <= tol, f"parameters differ by {err:.2e} relative > {tol:g}"


TRAIN = [sys.executable, "-c", "from train.trainer import entry; entry()"]


def assert_trains_like_one_process(run_on_ranks, ranks, small_args, tmp_path, dtype="float64", tol=1e-12, extra=()):
    """run_on_ranks(command), which runs a command on `ranks` ranks and returns its
    CompletedProcess, trains 5 steps of 4 rows a rank to the parameters one process reaches with
    the same global batch (`extra` config words for the ranks alone). float32 is held over all
    parameters at once (assert_parameters_close)."""
    common = small_args[:-1] + ["--max_steps=5", "--eval_interval=5", f"--tokens_per_step={ranks * 4 * 32}",
                                f"--dtype={dtype}"]
    one = subprocess.run(TRAIN + common + [f"--batch_size={ranks * 4}", f"--out_dir={tmp_path / 'one'}"],
                         capture_output=True, text=True, timeout=300)
    many = run_on_ranks(TRAIN + common + ["--batch_size=4", f"--out_dir={tmp_path / 'many'}", *extra])
    assert one.returncode == 0, one.stderr
    assert many.returncode == 0, many.stderr
    assert f"(1 x {ranks} x 4 x 32)" in many.stdout
    assert_parameters_close(final_parameters(tmp_path / "many", 5), final_parameters(tmp_path / "one", 5), tol,
                            per_tensor=dtype == "float64")
