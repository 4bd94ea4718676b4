"""The loss curve of a run, drawn from its metrics.jsonl."""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from engine.params import temporary_file  # noqa: E402


def read_metrics(path):
    """The rows of metrics.jsonl; a line that is not a row with a step (the last one, when a run
    was killed while appending it, or a hand edit) is skipped."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def plot_losses(metrics_path, png_path, title):
    """Training loss per logged step and validation loss per evaluation, written atomically."""
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, png_path)


def save_figure(fig, png_path):
    """Write fig to a temporary file beside png_path, then rename it there, and close it."""
    fd, tmp = temporary_file(os.path.dirname(os.path.abspath(png_path)), suffix=".png")
    os.close(fd)
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
