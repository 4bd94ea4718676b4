"""AdamW over the flat buffers, and clipping by the global gradient norm.

The moments are two more flat buffers beside the parameters (beside this rank's shard of them,
under ZeRO-1), so the update is one pass over four arrays. Weight decay applies to matrices and
the embedding only (every tensor of two or more dimensions), never to LayerNorm weights or
biases, as in nanoGPT and GPT-2.
"""
import numpy as np

from engine import kernels
from engine.backend import array_module, to_numpy
from engine.errors import UserError


def state_bytes(numel, dtype):
    """The bytes AdamW holds for `numel` parameters of `dtype`: two moments and a decay mask."""
    return numel * (2 * np.dtype(dtype).itemsize + 1)


class AdamW:
    """AdamW over the flat buffers, or (ZeRO-1) over `shard`, the slice of them this rank
    updates: it then holds the moments of that slice alone, and the other ranks' shards reach
    it by the all-gather after the step (engine/comm.py)."""

    def __init__(self, store, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, shard=None, exclude=(),
                 lr_scales=None):
        """`exclude`: parameters another optimizer (Muon) updates; AdamW leaves them as they are.
        `lr_scales`: {name: factor} for parameters whose rate is not lr but factor · lr (modded-
        nanogpt's embedding and head); the step's lr, warm-up and decay included, is scaled."""
        self.store = store
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay
        self.sharded = shard is not None  # the same on every rank, whatever its shard holds
        self.shard = shard or slice(0, store.numel)
        xp = store.xp
        size = self.shard.stop - self.shard.start
        self.m = xp.zeros(size, dtype=store.dtype)
        self.v = xp.zeros(size, dtype=store.dtype)
        decay = np.zeros(store.numel, dtype=np.uint8)
        for name, shape in store.shapes.items():
            if len(shape) >= 2:
                decay[store.span(name)] = 1
        self.decay = xp.asarray(decay[self.shard])
        self.runs = updated_runs(store, self.shard, exclude, lr_scales or {})
        self.step_count = 0

    @property
    def state_bytes(self):
        return state_bytes(self.m.size, self.m.dtype)

    def step(self, lr):
        self.step_count += 1
        data, grad = self.store.data[self.shard], self.store.grad[self.shard]
        for run, scale in self.runs:  # one pass over the buffers, or one per stretch at one rate
            kernels.of(self.m).adamw_step(data[run], grad[run], self.m[run], self.v[run], self.decay[run],
                                          lr * scale, self.beta1, self.beta2, self.eps, self.weight_decay,
                                          self.step_count)

    def whole_moments(self, comm):
        """(m, v) over every parameter, on rank 0 (None elsewhere under ZeRO-1, where they are
        gathered from every rank's shard: every rank calls this)."""
        if not self.sharded:
            return self.m, self.v
        return (comm.gather_shards(to_numpy(self.m), self.store.numel),
                comm.gather_shards(to_numpy(self.v), self.store.numel))

    def state_tensors(self, m, v):
        """Whole moments as safetensors entries, under adam_m.<name> / adam_v.<name>."""
        tensors = {}
        for name in self.store.shapes:
            tensors[f"adam_m.{name}"] = self.store.view(m, name)
            tensors[f"adam_v.{name}"] = self.store.view(v, name)
        return tensors

    def moments_from_tensors(self, tensors, source):
        """The whole (m, v) of state_tensors()'s entries, or a UserError naming the first
        parameter whose moments `source` lacks or holds in another shape."""
        for name, shape in self.store.shapes.items():
            if any(tuple(getattr(tensors.get(f"{moment}.{name}"), "shape", ())) != tuple(shape)
                   for moment in ("adam_m", "adam_v")):
                raise UserError(f"{source} has no usable AdamW state for {name}; it cannot resume training")
        m, v = (np.zeros(self.store.numel, self.store.dtype) for _ in range(2))  # on the host, as read
        for name in self.store.shapes:
            self.store.view(m, name)[...] = tensors[f"adam_m.{name}"]
            self.store.view(v, name)[...] = tensors[f"adam_v.{name}"]
        return m, v

    def load_whole_moments(self, m, v, step_count, comm):
        """Rank 0's whole moments (host arrays m and v; None on the other ranks) into every
        rank's: broadcast, or under ZeRO-1 scattered, so each rank receives its shard alone.
        Every rank calls this."""
        for mine, whole in ((self.m, m), (self.v, v)):
            if self.sharded:
                mine[...] = self.store.xp.asarray(comm.scatter_shards(whole, mine.size, mine.dtype))
            else:
                if comm.is_root:
                    mine[...] = self.store.xp.asarray(whole)
                comm.broadcast_array(mine, what="the checkpoint's broadcast")
        self.step_count = step_count


def updated_runs(store, shard, exclude, lr_scales):
    """(slice of `shard` relative to its start, lr's factor there) for the stretches AdamW updates:
    every parameter but those in `exclude`, neighbours at the same factor joined into one run."""
    runs = []
    for name in store.shapes:
        span = store.span(name)
        start, stop = max(span.start, shard.start) - shard.start, min(span.stop, shard.stop) - shard.start
        if name in exclude or start >= stop:
            continue
        scale = lr_scales.get(name, 1.0)
        if runs and runs[-1][0].stop == start and runs[-1][1] == scale:
            start = runs.pop()[0].start
        runs.append((slice(start, stop), scale))
    return runs


NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # modded-nanogpt's quintic coefficients


def newton_schulz(g, steps=5):
    """An approximately orthogonal matrix of g's shape (its U Vᵀ, singular values pushed near 1):
    g normalised, then `steps` quintic iterations X ← aX + (bA + cA²)X with A = X Xᵀ, worked on
    the wide orientation so that A is the smaller square. The products are the kernels' (on the
    CPU, shared among the step's threads: NumPy's own would run on one)."""
    a, b, c = NEWTON_SCHULZ
    xp, matmul = array_module(g), kernels.of(g).matmul
    x = g / (xp.linalg.norm(g) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = xp.ascontiguousarray(x.T)  # its products run a fifth faster than on the transposed view
    for _ in range(steps):
        A = matmul(x, x.T)
        B = b * A + c * matmul(A, A)
        x = a * x + matmul(B, x)
    return x.T if tall else x


def newton_schulz_flops(shape, steps=5):
    """The floating-point operations of newton_schulz on a matrix of `shape`."""
    m, n = sorted(shape)
    return steps * (4 * m * m * n + 2 * m ** 3)


def consecutive_parts(costs, parts):
    """Cut points [0, ..., len(costs)] that split `costs` into `parts` consecutive runs of about
    equal sums (a run may be empty when there are more parts than costs)."""
    total, cuts, running, i = sum(costs), [0], 0, 0
    for part in range(1, parts):
        while i < len(costs) and running + costs[i] / 2 < total * part / parts:
            running += costs[i]
            i += 1
        cuts.append(i)
    return cuts + [len(costs)]


class Muon:
    """Muon (Keller Jordan, 2024; modded-nanogpt's record 3) for the 2-D hidden matrices `names`:
    momentum buf ← μ buf + g with Nesterov's look-ahead u = g + μ buf, then p ← p - lr · s ·
    newton_schulz(u), s = √max(1, out/in) (modded's √max(1, rows/cols) of a PyTorch (out, in)
    weight; nano2 stores (in, out)). No weight decay.

    Over several ranks (`comm`), every rank holds every momentum (the same averaged gradients
    go into each), but the matrices are cut into consecutive runs of about equal Newton-Schulz
    work, one per rank: a rank orthogonalises and updates its own run alone, and one all-gather
    of the updated matrices brings every rank the others' (modded-nanogpt's distributed Muon).
    bench/muon_mpi.py measured this against every rank doing every matrix.

    `lr_scale`: Muon's rate as a factor of the step's lr, as AdamW's lr_scales, so that it
    follows the same warm-up and decay."""

    def __init__(self, store, names, momentum=0.95, comm=None, lr_scale=1.0):
        self.store, self.names, self.momentum, self.lr_scale = store, tuple(names), momentum, lr_scale
        self.buffers = {name: store.xp.zeros(store.shapes[name], store.dtype) for name in self.names}
        self.comm = comm if comm is not None and comm.world_size > 1 else None
        self.owned = self.names
        if self.comm is not None:
            cuts = consecutive_parts([newton_schulz_flops(store.shapes[name]) for name in self.names],
                                     comm.world_size)
            sizes = np.cumsum([0] + [store.params[name].size for name in self.names]).tolist()
            offsets = [sizes[cut] for cut in cuts]
            self.layout = [b - a for a, b in zip(offsets, offsets[1:])], offsets[:-1]
            self.owned = self.names[cuts[comm.rank]:cuts[comm.rank + 1]]
            self.packed = store.xp.empty(sizes[-1], store.dtype)  # the matrices one after another
            self.packed_views = {name: self.packed[start:stop].reshape(store.shapes[name])
                                 for name, start, stop in zip(self.names, sizes, sizes[1:])}

    def step(self, lr):
        lr *= self.lr_scale
        for name in self.names:
            buf = self.buffers[name]
            buf *= self.momentum
            buf += self.store.grads[name]
        for name in self.owned:
            g, buf, p = self.store.grads[name], self.buffers[name], self.store.params[name]
            n_in, n_out = p.shape
            p -= (lr * max(1.0, n_out / n_in) ** 0.5) * newton_schulz(g + self.momentum * buf)
        if self.comm is not None:
            self.exchange()

    def exchange(self):
        """Every rank's updated matrices to every rank, through the packed buffer."""
        for name in self.owned:
            self.packed_views[name][...] = self.store.params[name]
        self.comm.allgather_parts(self.packed, self.layout, "Muon's all-gather of the updated matrices")
        for name in self.names:
            if name not in self.owned:
                self.store.params[name][...] = self.packed_views[name]

    def state_tensors(self):
        return {f"muon_momentum.{name}": buf for name, buf in self.buffers.items()}

    def load_state(self, tensors, source):
        """Momentum from state_tensors()'s entries (host arrays), or a UserError naming what lacks."""
        for name, buf in self.buffers.items():
            saved = tensors.get(f"muon_momentum.{name}")
            if saved is None or tuple(saved.shape) != tuple(buf.shape):
                raise UserError(f"{source} has no usable Muon momentum for {name}; it cannot resume training")
            buf[...] = self.store.xp.asarray(saved)


def clip_grad_norm(grad, max_norm, norm):
    """Scale the gradients `grad` (a flat buffer, or this rank's shard of it under ZeRO-1) down
    so that their global norm, `norm` (from kernels' sum_of_squares, over every shard), is at
    most max_norm: PyTorch's rule, clip_grad_norm_."""
    if max_norm > 0:
        coefficient = max_norm / (norm + 1e-6)
        if coefficient < 1.0:
            grad *= grad.dtype.type(coefficient)
