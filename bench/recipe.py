"""The modded-nanogpt recipe against the baseline, trained on the same data at the same tokens
per step: validation bits per byte against step and against training time, overlaid in one
PNG; the steps the recipe needs to reach the baseline's final validation loss; and, with
--ablation, a table of each of the recipe's options alone on top of the baseline.

    .venv/bin/python bench/recipe.py [--data stories|PATH] [--baseline configs/tiny.json]
                                     [--recipe configs/modded.json] [--ablation] [--name NAME]
                                     [--runs_dir runs/recipe] [--out_dir bench] [-- --key=value ...]

Every run is `nano2_train` in a process of its own, one after another (so none shares the cores
with another), with the baseline's max_steps, the config's batch and sequence length, and
--eval_interval (100) for the curve's resolution; what follows `--` goes to every run (say
--max_steps=200 for a quick look). Each run's folder is RUNS_DIR/NAME/<run> (NAME: the
data's, by default), wiped first, with its train.log. The curve's time is the sum of the step
times nano2_train logs (every step here), the evaluations left out.

"ms/step" is measured apart, in this process after the runs: each run's training step
(train_step with its optimizers, on a random batch of its size) taken --timed_steps times, the
runs in turn, --rounds times, and the median kept, so that a drift in the machine's speed (a
shared machine's, between runs minutes apart) reaches every run alike.

An option's row in the ablation is the recipe's value of that key, with the keys that go with
it (muon_lr and muon_momentum with the optimizer, head_lr with the untied head), set on the
baseline. The table goes to stdout and to OUT_DIR/recipe_NAME.md, the curves to
OUT_DIR/recipe_NAME.png. --timing_only trains nothing and prints the step times alone (with
`-- --batch_size=32`, say, to see how the recipe's cost changes with the tokens per step).
"""
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import time

from engine.errors import UserError
from train.cli import ArgumentParser, positive, run_main
from train.config import load_config
from train.plot import read_metrics, save_figure
from train.trainer import make_optimizers, micro_steps_per_step, train_step
from vs_torch import blas_description

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

NOT_AN_OPTION = ("out_dir", "eval_interval", "eval_iters", "log_interval", "max_steps")
COMPANIONS = {"optimizer": ("muon_lr", "muon_momentum"), "tie_head": ("head_lr",), "positions": ("rope_base",)}


@dataclasses.dataclass
class Result:
    name: str
    overrides: list
    val: list            # (step, seconds of training before it, val_loss, val_bpb)
    step_seconds: list   # every step's

    @property
    def final_loss(self):
        return self.val[-1][2]

    def steps_to(self, loss):
        """The first evaluated step whose validation loss is at or below `loss` (None: never)."""
        return next((step for step, _, val_loss, _ in self.val if step > 0 and val_loss <= loss), None)


def read_result(name, overrides, metrics_path, tokens_per_step):
    """A run's curve from its metrics.jsonl: each step's time is tokens_per_step over the
    tokens/s logged for it, and an evaluation's time is the sum of the steps before it."""
    rows = read_metrics(metrics_path)
    step_seconds = [tokens_per_step / r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    val = [(r["step"], sum(step_seconds[:r["step"]]), r["val_loss"], r["val_bpb"]) for r in rows if "val_loss" in r]
    return Result(name, overrides, val, step_seconds)


def train(name, config, overrides, args, run_root):
    out_dir = os.path.join(run_root, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    command = [os.path.join(os.path.dirname(sys.executable), "nano2_train"), "--config", config, *overrides,
               f"--data={args.data}", f"--max_steps={args.max_steps}", f"--eval_interval={args.eval_interval}",
               "--log_interval=1", *args.extra, f"--out_dir={out_dir}"]
    print(f"{name}: {' '.join(overrides) or '(as configured)'} (log: {out_dir}/train.log)", flush=True)
    with open(os.path.join(out_dir, "train.log"), "w") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if status:
        with open(os.path.join(out_dir, "train.log")) as log:
            last = (log.read().strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"the {name} run failed (status {status}): {last}")
    cfg = load_config(config, overrides + args.extra)
    result = read_result(name, overrides, os.path.join(out_dir, "metrics.jsonl"),
                         micro_steps_per_step(cfg) * cfg.batch_size * cfg.seq_len)
    print(f"  {len(result.step_seconds)} steps, final val {result.val[-1][3]:.4f} bits/byte", flush=True)
    return result


def timed_step_seconds(runs, extra, rounds, steps):
    """The median time of each (config, overrides)'s training step, the runs timed in turn."""
    import numpy as np

    from train.data import random_batch
    from train.model_setup import set_up_rank
    takers = []
    for config, overrides in runs:
        cfg = load_config(config, overrides + extra)
        model, _ = set_up_rank(cfg)
        optimizer, muon = make_optimizers(cfg, model)
        rng = np.random.default_rng(0)
        batches = [tuple(model.xp.asarray(a) for a in random_batch(rng, cfg.batch_size, cfg.seq_len, cfg.vocab_size))
                   for _ in range(micro_steps_per_step(cfg))]
        takers.append(lambda model=model, optimizer=optimizer, muon=muon, batches=batches, cfg=cfg:
                      train_step(model, optimizer, batches, 1e-4, cfg.grad_clip, None, muon))
    seconds = [[] for _ in takers]
    for take in takers:  # the first steps compile the kernels
        take()
    for _ in range(rounds):
        for take, times in zip(takers, seconds):
            for _ in range(steps):
                started = time.perf_counter()
                take()
                times.append(time.perf_counter() - started)
    return [statistics.median(times) for times in seconds]


def option_overrides(baseline, recipe):
    """{option: [--key=value, ...]}: each model or optimiser key where the recipe differs from the
    baseline, with the keys that go with it; the rest (the rates of their own) one row each."""
    differ = [f.name for f in dataclasses.fields(recipe)
              if f.name not in NOT_AN_OPTION and getattr(recipe, f.name) != getattr(baseline, f.name)]
    companions = {c for key in differ for c in COMPANIONS.get(key, ())}
    return {key: [f"--{k}={getattr(recipe, k)}" for k in (key, *COMPANIONS.get(key, ()))]
            for key in differ if key not in companions}


def table(results, seconds):
    """The baseline (first) and every other run: the final loss, the steps to the baseline's, and
    the time of a step against the baseline's."""
    baseline = results[0]
    lines = ["| run | options | final val bits/byte | steps to the baseline's final loss | ms/step | time/step "
             "vs baseline |", "| --- | --- | --- | --- | --- | --- |"]
    for r, s in zip(results, seconds):
        steps = r.steps_to(baseline.final_loss)
        reached = f"{steps} ({steps / baseline.val[-1][0]:.0%})" if steps else f"not in {r.val[-1][0]}"
        lines.append(f"| {r.name} | {' '.join(r.overrides) or '-'} | {r.val[-1][3]:.4f} | {reached} | "
                     f"{s * 1e3:.1f} | {s / seconds[0]:.2f}x |")
    return "\n".join(lines)


def draw(baseline, recipe, path, title):
    import matplotlib.pyplot as plt  # train.plot chose the Agg backend
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100, sharey=True)
    for r, color in ((baseline, "tab:blue"), (recipe, "tab:orange")):
        steps, seconds, _, bpb = zip(*r.val[1:])
        by_step.plot(steps, bpb, "o-", ms=3, color=color, label=r.name)
        by_time.plot(seconds, bpb, "o-", ms=3, color=color, label=r.name)
    for ax in (by_step, by_time):
        ax.axhline(baseline.val[-1][3], color="gray", ls="--", lw=1, label="the baseline's final")
        ax.grid(alpha=0.3)
        ax.legend()
    by_step.set_xlabel("step")
    by_time.set_xlabel("training time (s, evaluations left out)")
    by_step.set_ylabel("validation bits per byte")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def main():
    parser = ArgumentParser(description=__doc__.splitlines()[0], epilog=None)
    parser.add_argument("--data", default="stories", help="stories (built in) or a path, as nano2_train's --data")
    parser.add_argument("--baseline", default=os.path.join("configs", "tiny.json"))
    parser.add_argument("--recipe", default=os.path.join("configs", "modded.json"))
    parser.add_argument("--ablation", action="store_true", help="also each option alone on the baseline")
    parser.add_argument("--eval_interval", type=positive(int), default=100)
    parser.add_argument("--name", help="the runs' folder and the outputs' suffix (default: the data's name)")
    parser.add_argument("--runs_dir", default=os.path.join(ROOT, "runs", "recipe"))
    parser.add_argument("--out_dir", default=HERE, help="where the table and the PNG go")
    parser.add_argument("--rounds", type=positive(int), default=5, help="rounds of the step timing")
    parser.add_argument("--timed_steps", type=positive(int), default=20, help="steps of a run timed in a round")
    parser.add_argument("--timing_only", action="store_true", help="no training: the step times alone")
    parser.add_argument("extra", nargs="*", metavar="-- --key=value", help="config overrides for every run")
    args = parser.parse_args()
    baseline_cfg, recipe_cfg = load_config(args.baseline, args.extra), load_config(args.recipe, args.extra)
    args.max_steps = baseline_cfg.max_steps
    name = args.name or os.path.basename(os.path.normpath(args.data))
    run_root = os.path.join(args.runs_dir, name)
    options = option_overrides(baseline_cfg, recipe_cfg) if args.ablation else {}
    runs = [(args.baseline, []), (args.recipe, []), *((args.baseline, o) for o in options.values())]
    tokens = micro_steps_per_step(baseline_cfg) * baseline_cfg.batch_size * baseline_cfg.seq_len
    machine = f"{os.cpu_count()} CPUs, {blas_description()}"
    if args.timing_only:
        seconds = timed_step_seconds(runs, args.extra, args.rounds, args.timed_steps)
        print(f"step times at {tokens} tokens per step; {machine}\n")
        print("| run | ms/step | vs baseline |\n| --- | --- | --- |")
        for run, s in zip(["baseline", "recipe", *options], seconds):
            print(f"| {run} | {s * 1e3:.1f} | {s / seconds[0]:.2f}x |")
        return
    baseline = train("baseline", args.baseline, [], args, run_root)
    recipe = train("recipe", args.recipe, [], args, run_root)
    ablation = [train(key, args.baseline, overrides, args, run_root) for key, overrides in options.items()]
    print("timing the steps", flush=True)
    seconds = timed_step_seconds(runs, args.extra, args.rounds, args.timed_steps)
    report = (f"{args.baseline} against {args.recipe} on {args.data}, {args.max_steps} steps of {tokens} tokens; "
              f"{machine}\n\n{table([baseline, recipe, *ablation], seconds)}\n")
    print(report)
    table_path = os.path.join(args.out_dir, f"recipe_{name}.md")
    with open(table_path + ".tmp", "w") as f:
        f.write(report)
    os.replace(table_path + ".tmp", table_path)
    draw(baseline, recipe, os.path.join(args.out_dir, f"recipe_{name}.png"),
         f"{os.path.basename(args.recipe)} vs {os.path.basename(args.baseline)} on {name}")


if __name__ == "__main__":
    run_main(main, "recipe")
