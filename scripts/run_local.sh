#!/usr/bin/env bash
# The main job: set up the environment if it is missing, train configs/tiny.json on the CPU
# for a few minutes (nano2_train prepares the built-in stories first), then print samples.
# The checkpoints, metrics.jsonl and loss.png stay in the run folder named at the end.
# Extra arguments go to nano2_train (e.g. --max_steps=200); RUN_DIR names the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh --if-needed
RUN_DIR=${RUN_DIR:-runs/tiny-$(date +%Y%m%d-%H%M%S)}
started=$(date +%s)
.venv/bin/nano2_train --config configs/tiny.json --out_dir="$RUN_DIR" "$@"
for seed in 1 2 3; do
    echo "---- sample $seed ----"
    .venv/bin/nano2_sample --ckpt "$RUN_DIR/best.safetensors" --seed "$seed" --max-new-tokens 800
done
echo "run folder: $RUN_DIR (best.safetensors, ckpt-*.safetensors, metrics.jsonl, loss.png); $(( $(date +%s) - started )) s in all"
