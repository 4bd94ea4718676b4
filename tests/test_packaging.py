"""The two GPU installs, pyproject's cuda12 and cuda13 extras, proven without a GPU: each resolves
(pip, against the package index, beside the test extra) to a CuPy and the CUDA pieces it loads at run time (the runtime,
NVRTC, cuBLAS, NCCL) of one CUDA major version, and that CuPy imports the GPU backend, which then
says in one line that there is no device; installed without its NCCL, comm=nccl is refused in one
line."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRAS = {"cuda12": ("cupy-cuda12x", 12), "cuda13": ("cupy-cuda13x", 13)}
# What CuPy loads at run time, by the name of its wheel less any -cu12/-cu13 suffix.
RUNTIME_PIECES = ("nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-cublas", "nvidia-nccl")


def pip(*args, timeout=600):
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]


def resolved(extra, tmp_path):
    """{package: version} that `pip install .[test,extra]` would install into an empty environment."""
    report = tmp_path / "report.json"
    pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), f"{ROOT}[test,{extra}]")
    return {p["metadata"]["name"].lower(): p["metadata"]["version"] for p in json.loads(report.read_text())["install"]}


@pytest.mark.parametrize("extra", EXTRAS)
def test_a_gpu_install_brings_what_cupy_loads_of_one_cuda_version(extra, tmp_path):
    cupy_name, major = EXTRAS[extra]
    packages = resolved(extra, tmp_path)
    assert cupy_name in packages
    for piece in RUNTIME_PIECES:
        found = {name: version for name, version in packages.items()
                 if name in (piece, f"{piece}-cu{major}")}
        assert found, f"{extra}: nothing of {piece}"
        if piece != "nvidia-nccl":  # NCCL counts its own versions; its wheel's name says the CUDA
            assert all(v.split(".")[0] == str(major) for v in found.values()), (extra, found)
    other = 25 - major  # 12 <-> 13
    assert not [name for name in packages if name.endswith(f"-cu{other}") or name == f"cupy-cuda{other}x"]

    # That CuPy, without its CUDA libraries (loaded at first use), imports the backend.
    target = tmp_path / "cupy"
    pip("install", "--quiet", "--no-deps", "--target", str(target), f"{cupy_name}=={packages[cupy_name]}")
    code = ("import sys, warnings; warnings.simplefilter('ignore')\n"  # CuPy warns that NCCL is missing here
            "import cupy, engine.kernels.gpu\n"
            "from engine.comm import nccl_communicator\n"
            "from engine.errors import UserError\n"
            "try:\n"
            "    nccl_communicator(None)\n"
            "except UserError as e:\n"
            "    print(e)\n"
            "from train.timing import gpu_fw_entry; gpu_fw_entry()")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), ROOT]))
    result = subprocess.run([sys.executable, "-c", code, "--config", "configs/tiny.json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-3000:]
    assert "no GPU: CuPy finds no CUDA device on this machine" in result.stderr
    assert result.stdout.startswith("comm=nccl: CuPy finds no NCCL") and result.stdout.count("\n") == 1
