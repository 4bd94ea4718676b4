"""nano2_train: train on prepared data, as nanoGPT's train.py does, with every gradient by hand.

Each step: micro-batches forward and backward (gradients averaged over them), clip by the
global norm, AdamW with linear warm-up then cosine decay. Every eval_interval steps: the
validation loss and bits per byte, a checkpoint (the last keep_checkpoints and the best are
kept), metrics.jsonl and loss.png in the run folder. Ctrl-C saves a checkpoint and stops;
`--resume` continues bit for bit.
"""
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

from engine import comm, kernels
from engine.backend import host_floats
from engine.comm import GradientAllreduce
from engine.errors import CommTimeout, UserError
from engine.flops import measure_matmul_flops, training_flops_per_token
from engine.optim import AdamW, Muon, clip_grad_norm
from layers.model import hidden_matrices, learning_rate_groups
from train.checkpoint import (checkpoint_path, keep_last, latest_checkpoint, load_checkpoint, load_parameters,
                              mark_best, save_checkpoint, step_checkpoints)
from train.cli import ArgumentParser, make_folder, parse_with_config, run_main
from train.data import TokenData, data_dir_for
from train.model_setup import set_up_rank
from train.plot import plot_losses, read_metrics
from train.prepare import prepare_on_root


class NonFiniteError(Exception):
    pass


def learning_rate(step, cfg):
    """Linear warm-up over warmup_steps, then cosine decay from lr to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def adamw_lr_scales(cfg, store):
    """lr's factor for each parameter whose group has a rate of its own (embedding_lr, head_lr,
    vector_lr; a rate of 0 leaves its group at lr)."""
    rates = {name: getattr(cfg, f"{group}_lr") for name, group in learning_rate_groups(store).items()}
    return {name: rate / cfg.lr for name, rate in rates.items() if rate}


def make_optimizers(cfg, model, shard=None, world=None):
    """(AdamW, Muon or None) for cfg: with optimizer=muon, Muon takes the blocks' matrices and
    AdamW the rest; AdamW over `shard` under ZeRO-1, Muon sharing its work among `world`'s ranks."""
    matrices = hidden_matrices(model) if cfg.optimizer == "muon" else ()
    optimizer = AdamW(model.store, cfg.beta1, cfg.beta2, cfg.adam_eps, cfg.weight_decay, shard, matrices,
                      adamw_lr_scales(cfg, model.store))
    muon = Muon(model.store, matrices, cfg.muon_momentum, world, cfg.muon_lr / cfg.lr) if matrices else None
    return optimizer, muon


def micro_steps_per_step(cfg, world_size=1):
    """How many micro-batches make one step of tokens_per_step tokens."""
    per_micro_step = cfg.batch_size * cfg.seq_len * world_size
    if cfg.tokens_per_step == 0:
        return 1
    if cfg.tokens_per_step % per_micro_step:
        raise UserError(f"tokens_per_step ({cfg.tokens_per_step}) must be a multiple of batch_size x seq_len "
                        f"x ranks ({cfg.batch_size} x {cfg.seq_len} x {world_size} = {per_micro_step})")
    return cfg.tokens_per_step // per_micro_step


def first_nonfinite(store, shard):
    """The first tensor in backward order (last layer first) whose gradient is not finite in
    `shard`, the part of the buffer this rank's optimizer reads (all of it but under ZeRO-1):
    where the NaN or Inf was born, since backward carries it on into every earlier layer."""
    for name in reversed(store.shapes):
        span = store.span(name)
        part = store.grad[max(span.start, shard.start):min(span.stop, shard.stop)]
        if part.size and not bool(store.xp.isfinite(part).all()):
            return name
    return None


def train_step(model, optimizer, batches, lr, grad_clip, sync=None, muon=None):
    """One optimizer step over a list of (inputs, targets) micro-batches at the schedule's lr:
    AdamW's, and Muon's for the matrices it holds, where given (each scales lr to its rates).

    With `sync` (a GradientAllreduce) the last micro-batch's backward starts each layer's
    allreduce as soon as its gradients are final; earlier micro-batches only accumulate.
    Returns (this rank's mean loss, gradient norm before clipping); raises NonFiniteError,
    leaving the parameters untouched, if the loss or any gradient is NaN or infinite."""
    model.store.zero_grad()
    losses = []
    for i, (idx, targets) in enumerate(batches):
        losses.append(model.forward(idx, targets)[1])
        last = i == len(batches) - 1
        model.backward(1.0 / len(batches), sync.ready if sync is not None and last else None)
    if sync is not None:
        sync.finish()
    grad = model.store.grad[optimizer.shard]
    # The step's one wait for the device: the losses and the gradient's squares read together.
    *losses, squares = host_floats(*losses, kernels.of(grad).sum_of_squares(grad))
    loss = sum(losses) / len(batches)
    norm = math.sqrt(sync.sum_over_shards(squares) if sync is not None else squares)
    clip_grad_norm(grad, grad_clip, norm)
    if not math.isfinite(loss) or not math.isfinite(norm):
        where = first_nonfinite(model.store, optimizer.shard)
        if where is not None:
            raise NonFiniteError(f"gradient of {where} (loss {loss})")
        # under ZeRO-1, a gradient outside this rank's shard: the norm says so on every rank
        raise NonFiniteError(f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm} (loss {loss})")
    optimizer.step(lr)
    if muon is not None:
        muon.step(lr)
    if sync is not None:
        sync.gather_parameters()
    return loss, norm


def evaluate(model, data, cfg, world):
    """Mean validation loss over eval_iters batches, the same batches at every evaluation,
    shared out among the ranks."""
    xp = model.xp
    total = 0.0
    for k in range(world.rank, cfg.eval_iters, world.world_size):
        idx, targets = data.batch("val", cfg.seed, k, cfg.batch_size, cfg.seq_len)
        total += float(model.forward(xp.asarray(idx), xp.asarray(targets))[1])
    return world.sum_floats([total], "the validation loss allreduce")[0] / cfg.eval_iters


def append_metrics(path, row, wandb_run):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    if wandb_run is not None:
        wandb_run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])


def start_wandb(cfg):
    if not cfg.wandb:
        return None
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb=true needs the wandb package (pip install wandb)") from None
    return wandb.init(project=cfg.wandb_project, config=cfg.to_dict(), mode=cfg.wandb_mode, dir=cfg.out_dir)


class StopRequest:
    """Turns Ctrl-C into a flag the loop checks between steps, so a step is never cut in half."""

    def __init__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self.previous)  # a second Ctrl-C stops at once

    def restore(self):
        signal.signal(signal.SIGINT, self.previous)


def load_for_resume(resume, model, optimizer, cfg, world, muon=None):
    """Rank 0 reads the checkpoint and every rank receives its parameters, AdamW (and Muon) state
    and metadata, so a run resumes on any number of ranks, with or without a shared disk."""
    metadata = m = v = None
    if world.is_root:
        path = latest_checkpoint(cfg.out_dir) if resume == "latest" else resume
        metadata, (m, v) = load_checkpoint(path, model, optimizer, cfg, muon)
        metadata["path"] = path
    metadata = world.broadcast_object(metadata, what="the checkpoint's broadcast")
    world.broadcast_array(model.store.data, what="the checkpoint's broadcast")
    optimizer.load_whole_moments(m, v, metadata["step"], world)
    for buffer in (muon.buffers.values() if muon is not None else ()):
        world.broadcast_array(buffer, what="the checkpoint's broadcast")
    return metadata


@dataclass
class Run:
    """One training run: what start_or_resume sets up, and the two things evaluate_and_save
    changes as it goes (the best validation loss and the last checkpoint written)."""
    cfg: object
    world: object
    data: TokenData
    model: object
    optimizer: AdamW
    sync: GradientAllreduce
    micro_steps: int
    start: int = 0
    step: int = 0                 # the step being taken, counted from 1
    best_val_loss: float = math.inf
    last_good: str = None
    wandb_run: object = None
    muon: Muon = None             # with optimizer=muon, for the blocks' matrices

    @property
    def tokens_per_step(self):
        return self.micro_steps * self.cfg.batch_size * self.cfg.seq_len * self.world.world_size

    @property
    def metrics_path(self):
        return os.path.join(self.cfg.out_dir, "metrics.jsonl")

    @property
    def val_bits_per_token(self):
        return len(self.data.tokens["val"]) / self.data.val_bytes / math.log(2)


def start_or_resume(cfg, resume, init_from=None):
    """Every rank's model, optimizer and data for cfg, in a new run folder from random weights or
    from init_from's parameters, or from a checkpoint to resume (rank 0 alone reads checkpoints,
    prepares data and writes the folder)."""
    world = comm.world()
    model, _ = set_up_rank(cfg)
    if init_from is not None and world.is_root:
        load_parameters(init_from, model)
    prepare_on_root(cfg)
    data = TokenData(data_dir_for(cfg))
    data.check_fits(cfg.seq_len, cfg.vocab_size)
    micro_steps = micro_steps_per_step(cfg, world.world_size)
    world.broadcast_array(model.store.data, what="the parameter broadcast")
    sync = GradientAllreduce(world, model.store, model.gradient_buckets(), cfg.comm, cfg.zero)
    optimizer, muon = make_optimizers(cfg, model, sync.shard, world)
    run = Run(cfg, world, data, model, optimizer, sync, micro_steps, muon=muon)
    if resume:
        metadata = load_for_resume(resume, model, optimizer, cfg, world, muon)
        run.start, run.best_val_loss, run.last_good = metadata["step"], metadata["best_val_loss"], metadata["path"]
        if world.is_root:
            forget_metrics_after(run.metrics_path, run.start)
            print(f"resuming from {run.last_good} at step {run.start}")
    elif world.is_root:
        if step_checkpoints(cfg.out_dir):
            raise UserError(f"{cfg.out_dir} already holds a run's checkpoints; pass --resume to continue it "
                            f"or choose another --out_dir")
        make_folder(cfg.out_dir, "out_dir")
        if os.path.exists(run.metrics_path):
            os.remove(run.metrics_path)
    run.wandb_run = start_wandb(cfg) if world.is_root else None
    return run


def forget_metrics_after(path, step):
    """Drop what metrics.jsonl logged after `step` (the checkpoint a run resumes from)."""
    if os.path.exists(path):
        rows = [r for r in read_metrics(path) if r["step"] <= step]
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(path + ".tmp", path)


def evaluate_and_save(run, step):
    """The validation loss at `step`; after step 0 also a checkpoint (the best one marked),
    metrics.jsonl and loss.png, which rank 0 writes."""
    cfg = run.cfg
    val_loss = evaluate(run.model, run.data, cfg, run.world)
    if step > 0:
        run.best_val_loss = min(run.best_val_loss, val_loss)
        run.last_good = checkpoint_path(cfg.out_dir, step)
        m, v = run.optimizer.whole_moments(run.world)  # every rank: under ZeRO-1, gathered to rank 0
    if run.world.is_root:
        append_metrics(run.metrics_path, {"step": step, "val_loss": val_loss,
                                          "val_bpb": val_loss * run.val_bits_per_token}, run.wandb_run)
        plot_losses(run.metrics_path, os.path.join(cfg.out_dir, "loss.png"),
                    f"nano2 {cfg.n_layer}x{cfg.d_model} on {cfg.data}")
        if step > 0:
            state = {"step": step, "val_loss": val_loss, "best_val_loss": run.best_val_loss}
            tensors = run.optimizer.state_tensors(m, v)
            if run.muon is not None:
                tensors.update(run.muon.state_tensors())
            save_checkpoint(run.last_good, run.model, tensors, cfg, state)
            keep_last(cfg.out_dir, cfg.keep_checkpoints)
            if val_loss == run.best_val_loss:
                mark_best(run.last_good, cfg.out_dir)
    return val_loss


def run_steps(run, stop, bar, log_lines):
    """The steps from run.start to max_steps. Returns (exit status, closing message): 0 when
    done, 1 at a non-finite loss or gradient, 130 when Ctrl-C stopped it after a step."""
    cfg, world, model, sync = run.cfg, run.world, run.model, run.sync
    xp = model.xp
    flops_per_token = training_flops_per_token(model.store.numel, cfg.n_layer, cfg.d_model, cfg.seq_len)
    peak_flops = measure_matmul_flops(xp, model.store.dtype) * world.world_size
    for step in range(run.start, cfg.max_steps):
        run.step = step + 1
        started = time.perf_counter()
        batches = [tuple(xp.asarray(a) for a in run.data.batch("train", cfg.seed, step, cfg.batch_size, cfg.seq_len,
                                                                  micro_step=m, micro_steps=run.micro_steps,
                                                                  rank=world.rank, ranks=world.world_size))
                   for m in range(run.micro_steps)]
        lr = learning_rate(step, cfg)
        try:
            loss, norm = train_step(model, run.optimizer, batches, lr, cfg.grad_clip, sync, run.muon)
        except NonFiniteError as e:
            return 1, (f"nano2_train: step {step + 1}: non-finite {e}; stopped, the last good checkpoint is "
                       f"{run.last_good or '(none yet)'}")
        # One small allreduce: the loss averaged over ranks, and whether any rank saw Ctrl-C,
        # so that every rank stops after the same step.
        loss_sum, stops = world.sum_floats([loss, float(stop.requested)], "the step's loss allreduce")
        loss = loss_sum / world.world_size
        elapsed = time.perf_counter() - started
        comm_seconds = sync.take_comm_seconds()
        tokens_per_s = run.tokens_per_step / elapsed
        mfu = flops_per_token * tokens_per_s / peak_flops
        done = step + 1
        bar.update(1)
        bar.set_postfix_str(f"loss {loss:.4f} | {tokens_per_s:,.0f} tok/s | MFU {mfu:.1%}")
        if done % cfg.log_interval == 0 and world.is_root:
            append_metrics(run.metrics_path, {"step": done, "loss": loss, "lr": lr, "grad_norm": norm,
                                              "tokens_per_s": tokens_per_s, "mfu": mfu,
                                              "comm_share": comm_seconds / elapsed}, run.wandb_run)
            if log_lines:
                print(f"step {done}/{cfg.max_steps} | loss {loss:.4f} | lr {lr:.2e} | grad norm {norm:.4f} | "
                      f"{tokens_per_s:,.0f} tok/s | MFU {mfu:.1%} | {elapsed * 1e3:.1f} ms", flush=True)
        if done % cfg.eval_interval == 0 or done == cfg.max_steps:
            val_loss = evaluate_and_save(run, done)
            if world.is_root:
                bar.write(f"step {done}: val loss {val_loss:.4f}, {val_loss * run.val_bits_per_token:.3f} bits/byte")
        if stops:
            if done % cfg.eval_interval and done != cfg.max_steps:
                evaluate_and_save(run, done)
            return 130, f"nano2_train: interrupted; saved {run.last_good}; continue with --resume"
    return 0, (f"done: best val loss {run.best_val_loss:.4f} ({run.best_val_loss * run.val_bits_per_token:.3f} "
               f"bits/byte); checkpoints, metrics.jsonl and loss.png in {cfg.out_dir}")


def train(cfg, resume=None, init_from=None):
    """Train per cfg; returns the process exit status. Every rank runs this. On a terminal
    rank 0 draws a progress bar; elsewhere (a log file, a batch job) it prints one plain line
    every log_interval steps, as nanoGPT and llm.c do."""
    run = start_or_resume(cfg, resume, init_from)
    world = run.world
    if world.is_root:
        print(f"nano2: {run.model.store.numel:,} parameters, {run.tokens_per_step:,} tokens per step "
              f"({run.micro_steps} x {world.world_size} x {cfg.batch_size} x {cfg.seq_len}), {cfg.max_steps} steps, "
              f"AdamW state {run.optimizer.state_bytes / 2**20:,.1f} MiB per rank"
              f"{' (ZeRO-1)' if run.sync.shard else ''}, run folder {cfg.out_dir}")
    if run.start == 0:
        evaluate_and_save(run, 0)
    on_terminal = world.is_root and sys.stderr.isatty()
    stop = StopRequest()
    bar = tqdm(total=cfg.max_steps, initial=run.start, unit="step", dynamic_ncols=True, disable=not on_terminal)
    try:
        status, message = run_steps(run, stop, bar, log_lines=world.is_root and not on_terminal)
    except CommTimeout as e:
        raise CommTimeout(f"step {run.step}: {e}") from None
    finally:
        stop.restore()
        bar.close()
        if run.wandb_run is not None:
            run.wandb_run.finish()
    if world.is_root:
        print(message, file=sys.stderr if status else sys.stdout)
    return status


def main(argv=None):
    parser = ArgumentParser(prog="nano2_train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="JSON config file (default: the built-in defaults)")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CKPT",
                        help="continue from the newest checkpoint in out_dir, or from CKPT")
    parser.add_argument("--init_from", "--init-from", metavar="CKPT",
                        help="a new run from CKPT's parameters (any nano2 checkpoint, an imported one too), "
                             "its model's shape and tokenizer, with a fresh optimizer at step 0")
    args, cfg = parse_with_config(parser, argv, "init_from")
    if args.resume and args.init_from:
        raise UserError("--resume continues a run and --init_from starts one: give one of them")
    return train(cfg, args.resume, args.init_from)


def entry():
    sys.exit(run_main(main, "nano2_train"))
