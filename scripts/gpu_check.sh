#!/usr/bin/env bash
# The GPU check, for whoever has a GPU: the GPU tests, then nano2_fw and nano2_fwbw --profile on
# configs/nano2.json and configs/gpt2-small.json, in one report (gpu_check.md, or the path given),
# in under 8 minutes. Its Python: .venv where it already has CuPy; else a python3 that has CuPy
# (a machine where nothing can be installed: CUDA 13's CuPy there, the project on PYTHONPATH);
# else .venv built and given the extra of the driver's CUDA version (.[cuda12] or .[cuda13]).
set -uo pipefail
cd "$(dirname "$0")/.."
report=$(realpath -m "${1:-gpu_check.md}")

if .venv/bin/python -c "import cupy" 2>/dev/null; then
    python=.venv/bin/python
elif python3 -c "import cupy" 2>/dev/null; then
    python=python3
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: \([0-9]*\).*/\1/p')
    if [ -z "$cuda" ]; then
        echo "gpu_check: no GPU here (nvidia-smi names no CUDA version)" >&2
        exit 2
    fi
    [ "$cuda" -ge 13 ] && extra=cuda13 || extra=cuda12
    if ! { ./scripts/build.sh --if-needed >/dev/null &&
           .venv/bin/python -m pip install --quiet -e ".[test,$extra]"; }; then
        echo "gpu_check: no CuPy here, and pip could not install .[$extra]" >&2
        exit 2
    fi
    python=.venv/bin/python
fi

partial="$report.partial"
failed=0
step() {  # step TITLE SECONDS COMMAND...: the command's output, fenced, under its title
    local title=$1 seconds=$2
    shift 2
    echo "gpu_check: $title" >&2
    {
        echo "## $title"
        echo
        echo '```'
        echo "\$ $*"
        timeout "$seconds" "$@" 2>&1
        status=$?
        echo "(exit status $status)"
        [ "$status" -eq 0 ] || failed=1
        echo '```'
        echo
    } >>"$partial"
}
# A GPU timing command (its name first) through this Python, which may have no console scripts.
timing=("$python" -c "import sys; from train.timing import entry; entry(sys.argv.pop(1))")

{
    echo "# nano2 GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    "$python" -W ignore -c "import sys, cupy; from cupy.cuda import nccl; print('python', sys.version.split()[0],
'| cupy', cupy.__version__, '| CUDA runtime', cupy.cuda.runtime.runtimeGetVersion(), '| NCCL', nccl.available)" 2>&1
    git log -1 --format='commit %h %s' 2>/dev/null | cut -c1-100
    echo '```'
    echo
} >"$partial"
step "GPU tests" 240 "$python" -m pytest -q -rs tests/test_gpu.py tests/test_comm_gpu.py
for config in configs/nano2.json configs/gpt2-small.json; do
    step "nano2_fw, $config" 45 "${timing[@]}" nano2_fw --config "$config" --fw-iters 10
    step "nano2_fwbw --profile, $config" 75 "${timing[@]}" nano2_fwbw --config "$config" --fwbw-iters 5 --profile
done
mv "$partial" "$report"
echo "gpu_check: wrote $report$([ "$failed" -eq 0 ] || echo '; some steps failed, see there')" >&2
exit "$failed"
