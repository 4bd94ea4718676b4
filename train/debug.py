"""nano2_debug: look inside one step of backprop, layer by layer.

  state      one forward and backward written as a safetensors debug state (as llm.c's
             gpt2_124M_debug_state.bin): inputs, targets, logits, loss, parameters, grad.<name>
  trace      every layer's forward then backward in execution order: each tensor's summary,
             then each parameter's gradient norm and its ratio to the parameter's norm
  check      each layer's backward against central differences in float64, on the inputs it
             saw in this step; names the first layer that fails (exit 1)
  step       stop at each layer (or at --break NAME:forward|backward) and inspect it
  dump       write every recorded tensor to a safetensors file (one per rank under MPI)
  diff A B   compare two dumps tensor by tensor; names the first layer where they part
  nonfinite  the first layer whose output or gradient holds NaN or Inf, and its inputs

The batch is seeded random tokens, or the first validation batch of a prepared folder (--data-dir).
"""
import argparse
import os
import pdb
import sys

import numpy as np

from engine import comm
from engine.backend import to_numpy
from engine.errors import UserError
from engine.params import read_safetensors, write_safetensors
from layers.model import parameter_names
from train.cli import ArgumentParser, add_checkpoint_argument, not_negative, positive, run_main
from train.config import load_config
from train.data import TokenData, random_batch
from train.finite_differences import EPS, TOLERANCE, checked_differences, relative_error, sample_entries
from train.model_setup import set_up_rank
from train.tracing import Tracer, summary

CHECK_TOLERANCE = TOLERANCE["float64"]


def write_state(model, cfg, idx, targets, path):
    """Run one forward and backward on (idx, targets) and write everything it produced to `path`."""
    model.store.zero_grad()
    logits, loss = model.forward(idx, targets)
    model.backward()
    tensors = {
        "inputs": to_numpy(idx).astype(np.int32),
        "targets": to_numpy(targets).astype(np.int32),
        "logits": to_numpy(logits),
        "loss": to_numpy(loss).reshape(1),
    }
    tensors.update(model.store.state_tensors(with_grads=True))
    write_safetensors(path, tensors, {"config": cfg.to_dict(), "format": "nano2 debug state"})
    return float(loss)


def setup(cfg, ckpt=None, dtype=None):
    """The model (from checkpoint `ckpt`'s parameters when given) and this rank's batch: its rows
    of a seeded random batch, or, given --data_dir, of the first validation batch of that prepared
    folder."""
    world = comm.world()
    if cfg.data_dir:
        data = TokenData(cfg.data_dir)
        data.check_fits(cfg.seq_len, cfg.vocab_size)
        idx, targets = data.batch("val", cfg.seed, 0, cfg.batch_size, cfg.seq_len, rank=world.rank,
                                  ranks=world.world_size)
    else:
        rows = cfg.batch_size * world.world_size
        idx, targets = random_batch(np.random.default_rng(cfg.seed), rows, cfg.seq_len, cfg.vocab_size)
        mine = slice(world.rank * cfg.batch_size, (world.rank + 1) * cfg.batch_size)
        idx, targets = idx[mine], targets[mine]
    model, _ = set_up_rank(cfg, dtype, ckpt)
    return model, model.xp.asarray(idx), model.xp.asarray(targets)


def traced_step(model, idx, targets, on_event=None):
    """One forward and backward with every layer recorded; returns the tracer (restored)."""
    tracer = Tracer(model, on_event)
    try:
        model.store.zero_grad()
        model.forward(idx, targets)
        model.backward()
    finally:
        tracer.restore()
    return tracer


def tensor_rows(event):
    kinds = ("in", "out") if event.phase == "forward" else ("grad in", "grad out")
    for kind, group in zip(kinds, (event.inputs, event.outputs)):
        for k, array in enumerate(group):
            yield f"{kind}{k}", summary(array)


def format_summary(label, s):
    shape = "x".join(map(str, s["shape"])) or "scalar"
    return (f"{label:<9} {shape:>13} {s['mean']:>10.3e} {s['std']:>9.3e} {s['min']:>10.3e} {s['max']:>10.3e} "
            f"{s['absmax']:>9.3e} {s['nonfinite']:>5}")


SUMMARY_HEADER = f"{'tensor':<9} {'shape':>13} {'mean':>10} {'std':>9} {'min':>10} {'max':>10} {'max|x|':>9} {'nan/inf':>5}"


def print_event_tensors(event):
    print(SUMMARY_HEADER)
    for label, s in tensor_rows(event):
        print(format_summary(label, s))


def trace_command(args, cfg):
    model, idx, targets = setup(cfg, args.ckpt)
    tracer = traced_step(model, idx, targets)
    print(f"{'#':>3} {'layer':<22} {'phase':<8} {'ms':>7}  {SUMMARY_HEADER}")
    for e in tracer.events:
        for label, s in tensor_rows(e):
            print(f"{e.index:>3} {e.name:<22} {e.phase:<8} {e.seconds * 1e3:>7.2f}  {format_summary(label, s)}")
    print(f"\n{'parameter':<28} {'|grad|':>10} {'|param|':>10} {'|grad|/|param|':>14}")
    for name in model.store.shapes:
        g = float(np.linalg.norm(to_numpy(model.store.grads[name])))
        p = float(np.linalg.norm(to_numpy(model.store.params[name])))
        print(f"{name:<28} {g:>10.3e} {p:>10.3e} {g / p if p else float('inf'):>14.3e}")
    return 0


def check_layer(model, name, layer, inputs, upstream, n_samples, rng):
    """[(tensor, relative error)] for one layer's backward against central differences of
    L = Σ forward(inputs) · upstream, on sampled entries of its float inputs and parameters."""
    store = model.store
    store.zero_grad()
    xp = model.xp
    inputs = [xp.asarray(a) for a in inputs]
    g = xp.asarray(upstream) if upstream is not None else 1.0
    layer.forward(*inputs)
    dx = layer.backward(g)
    names = parameter_names(layer)
    analytic = {n: to_numpy(store.grads[n]).copy() for n in names}

    def loss():
        return (layer.forward(*inputs) * g).sum()

    targets = [(f"{name} input", inputs[0], to_numpy(dx))] if dx is not None and inputs[0].dtype.kind == "f" else []
    targets += [(n, store.params[n], analytic[n]) for n in names]
    results = []
    for label, array, grad in targets:
        flat, grad = array.reshape(-1), np.asarray(grad, dtype=np.float64).ravel()
        entries = sample_entries(grad, n_samples, rng)
        _, err = checked_differences(loss, flat, entries, grad[entries], EPS, CHECK_TOLERANCE)
        results.append((label, err))
    return results


def check_command(args, cfg):
    model, idx, targets = setup(cfg, args.ckpt, dtype="float64")
    tracer = traced_step(model, idx, targets)
    last_forward = {}
    rng = np.random.default_rng(0)
    print(f"{'layer':<22} {'worst tensor':<30} {'rel err':>9}")
    for e in tracer.events:
        if e.phase == "forward":
            last_forward[e.name] = e
            continue
        forward = last_forward[e.name]
        if not forward.inputs:
            continue
        upstream = e.inputs[0] if e.inputs else None
        results = check_layer(model, e.name, e.layer, forward.inputs, upstream, args.samples, rng)
        if not results:
            continue
        label, err = max(results, key=lambda r: r[1])
        failed = err > CHECK_TOLERANCE
        print(f"{e.name:<22} {label:<30} {err:>9.2e}{'  FAIL' if failed else ''}")
        if failed:
            print(f"first failing backward: {e.name} ({label}: relative error {err:.2e} > {CHECK_TOLERANCE:g})")
            return 1
    print(f"every layer's backward agrees with central differences within {CHECK_TOLERANCE:g}")
    return 0


def nonfinite_command(args, cfg):
    model, idx, targets = setup(cfg, args.ckpt)
    store = model.store
    bad_gradients = {}  # event index: the first parameter whose gradient was non-finite right after it

    def check_gradients(e):
        # A backward's parameter gradients go into the store, not into its outputs; the events
        # come innermost layer first, so the first to see one is the layer that wrote it.
        if e.phase == "backward":
            for name in parameter_names(e.layer):
                if not bool(model.xp.isfinite(store.grads[name]).all()):
                    bad_gradients[e.index] = name
                    return

    tracer = traced_step(model, idx, targets, on_event=check_gradients)
    for e in tracer.events:
        bad = [k for k, a in enumerate(e.outputs) if not np.isfinite(a).all()]
        if bad or e.index in bad_gradients:
            what = f"output {bad[0]}" if bad else f"the gradient of {bad_gradients[e.index]}"
            print(f"first non-finite: {e.name} {e.phase} (event {e.index}), {what}")
            print_event_tensors(e)
            return 1
    print("no NaN or Inf in any layer's output or gradient")
    return 0


def dump_path(path, world):
    """Under MPI each rank writes its own file, its rank in the name."""
    if world.world_size == 1:
        return path
    stem, extension = os.path.splitext(path)
    return f"{stem}.rank{world.rank}{extension}"


def dump_command(args, cfg):
    model, idx, targets = setup(cfg, args.ckpt)
    tracer = traced_step(model, idx, targets)
    tensors = {}
    for e in tracer.events:
        for kind, group in (("in", e.inputs), ("out", e.outputs)):
            for k, array in enumerate(group):
                tensors[f"{e.index:04d}/{e.name}/{e.phase}/{kind}{k}"] = array
    tensors.update(model.store.state_tensors(with_grads=True))
    world = comm.world()
    path = dump_path(args.out, world)
    write_safetensors(path, tensors, {"config": cfg.to_dict(), "rank": str(world.rank), "format": "nano2 dump"})
    print(f"wrote {path}: {len(tracer.events)} layer calls, {len(tensors)} tensors")
    return 0


def diff_command(args):
    a, _ = read_safetensors(args.a)
    b, _ = read_safetensors(args.b)
    recorded = sorted(k for k in a if "/" in k and k in b)
    print(f"{'tensor':<48} {'max |a-b|':>10} {'rel diff':>9}")
    first = None
    for key in recorded + sorted(k for k in a if "/" not in k and k in b):
        x, y = a[key].astype(np.float64), b[key].astype(np.float64)
        if x.shape != y.shape:
            print(f"{key:<48} shapes {x.shape} and {y.shape}")
            first = first or key
            continue
        largest = float(np.abs(x - y).max()) if x.size else 0.0
        rel = relative_error(x.ravel(), y.ravel())
        if rel > args.tol or not np.array_equal(np.isfinite(x), np.isfinite(y)):
            print(f"{key:<48} {largest:>10.3e} {rel:>9.2e}")
            first = first or key
    only = sorted(set(a) ^ set(b))
    if only:
        print(f"{len(only)} tensors are in only one file, e.g. {only[0]}")
    if first is None and not only:
        print(f"the dumps agree within {args.tol:g} relative")
        return 0
    if first is not None:
        layer = first.split("/")[1] if "/" in first else first
        print(f"first difference: {layer} ({first})")
    return 1


class Stepper:
    """The interactive stop at each layer call (see `help` at the prompt)."""

    HELP = ("n: next layer call | c [NAME[:PHASE]]: continue (to a layer) | b NAME:PHASE: breakpoint | "
            "p TENSOR: print in0/out0/... | l: list breakpoints | pdb: debugger with layer, cache, inputs, outputs | "
            "q: quit")

    def __init__(self, layer_names, breakpoints, stepping):
        self.layer_names = layer_names
        self.breakpoints = set(breakpoints)
        self.stepping = stepping
        self.run_to = None

    def __call__(self, e):
        here = {e.name, f"{e.name}:{e.phase}"}
        if self.run_to and self.run_to in here:
            self.run_to, self.stepping = None, True
        if not (self.stepping or self.breakpoints & here):
            return
        print(f"[{e.index}] {e.name} {e.phase} ({e.seconds * 1e3:.2f} ms)")
        print_event_tensors(e)
        self.prompt(e)

    def prompt(self, e):
        tensors = {f"in{k}": a for k, a in enumerate(e.inputs)} | {f"out{k}": a for k, a in enumerate(e.outputs)}
        while True:
            try:
                line = input("(nano2) ").strip()
            except EOFError:
                self.stepping, self.breakpoints = False, set()
                return
            command, _, argument = line.partition(" ")
            if command in ("n", "next", ""):
                self.stepping = True
                return
            names_a_call = command in ("b", "break") or (command in ("c", "continue") and argument)
            error = breakpoint_error(self.layer_names, argument) if names_a_call else None
            if error:
                print(error)  # and ask again, rather than run to the end without stopping
            elif command in ("c", "continue"):
                self.stepping, self.run_to = False, argument or None
                return
            elif command in ("b", "break"):
                self.breakpoints.add(argument)
                print(f"breakpoint at {argument}")
            elif command == "l":
                print(", ".join(sorted(self.breakpoints)) or "no breakpoints")
            elif command in ("p", "print"):
                if argument in tensors:
                    print(np.array2string(tensors[argument], threshold=64, edgeitems=3, precision=4))
                else:
                    print(f"no tensor {argument!r} here; there are {', '.join(tensors) or 'none'}")
            elif command == "pdb":
                layer, cache, inputs, outputs = e.layer, getattr(e.layer, "cache", None), e.inputs, e.outputs  # noqa: F841
                print("in scope: layer, cache, inputs, outputs")
                pdb.set_trace()
            elif command in ("q", "quit"):
                raise SystemExit(0)
            else:
                print(self.HELP)


def breakpoint_error(layer_names, breakpoint):
    """Why NAME or NAME:PHASE names no layer call, or None if it does."""
    name, _, phase = breakpoint.partition(":")
    if name in layer_names and phase in ("", "forward", "backward"):
        return None
    return (f"{breakpoint}: no such layer and phase (NAME or NAME:forward|backward; the layers are listed "
            f"by `nano2_debug trace`)")


def step_command(args, cfg):
    model, idx, targets = setup(cfg, args.ckpt)
    names = {name for name, _ in model.named_layers()}
    for breakpoint in args.breaks:
        if breakpoint_error(names, breakpoint):
            raise UserError(f"--break {breakpoint_error(names, breakpoint)}")
    stepper = Stepper(names, args.breaks, stepping=not args.breaks)
    traced_step(model, idx, targets, on_event=stepper)
    print("step finished")
    return 0


def state_command(args, cfg):
    model, idx, targets = setup(cfg, args.ckpt)
    loss = write_state(model, cfg, idx, targets, args.out)
    print(f"wrote {args.out}: loss {loss:.6f}, {len(model.store.shapes)} parameters and their "
          f"gradients, batch {cfg.batch_size} x {cfg.seq_len}, {cfg.dtype}")
    return 0


def main(argv=None):
    parser = ArgumentParser(prog="nano2_debug", description=__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    def add(name, help_text, batch=True):
        sub = commands.add_parser(name, help=help_text)
        if batch:  # --batch-size, --seq-len, --seed, --dtype, --data-dir are config keys
            sub.add_argument("--config", help="JSON config file (default: the built-in defaults)")
            add_checkpoint_argument(sub)
        return sub

    add("state", "write one step's inputs, logits, loss, parameters and gradients").add_argument(
        "--out", required=True, help="the .safetensors file to write")
    add("trace", "every layer's tensors, in execution order")
    add("check", "each layer's backward against finite differences").add_argument(
        "--samples", type=positive(int), default=4, help="entries checked per tensor")
    add("step", "stop at each layer and inspect it").add_argument(
        "--break", dest="breaks", action="append", default=[], metavar="NAME:PHASE",
        help="stop only here (repeatable), e.g. blocks.2.attn:backward")
    add("dump", "write every recorded tensor").add_argument("--out", required=True)
    add("nonfinite", "the first layer that makes a NaN or Inf")
    diff = add("diff", "compare two dumps", batch=False)
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--tol", type=not_negative(float), default=1e-5, help="largest relative difference that counts as equal")

    args, rest = parser.parse_known_args(argv)
    if args.command == "diff":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return diff_command(args)
    cfg = load_config(args.config, rest, args.ckpt)
    return {"state": state_command, "trace": trace_command, "check": check_command, "step": step_command,
            "dump": dump_command, "nonfinite": nonfinite_command}[args.command](args, cfg)


def entry():
    sys.exit(run_main(main, "nano2_debug"))
