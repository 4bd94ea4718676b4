"""An independent PyTorch model written from DESIGN.md's description (autograd does the
gradients), for the parity tests."""
import math

import torch

F = torch.nn.functional


def torch_loss(p, idx, targets, n_layer, n_head, positions="sinusoidal", scale_embedding=True, activation="gelu",
               norm="layernorm", bias=True, tie_head=True, qk_norm=False, rope_base=10000.0):
    V, d = p["tok_emb.weight"].shape
    B, T = idx.shape
    hd = d // n_head
    if positions == "learned":  # GPT-2's wpe
        pe = p["pos_emb.weight"][:T]
    elif positions == "rotary":  # on q and k alone, below
        pe = 0.0
        theta = rope_base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        angle = torch.outer(torch.arange(T, dtype=torch.float64), theta).to(p["tok_emb.weight"].dtype)
        cos, sin = angle.cos(), angle.sin()
    else:
        position = torch.arange(T, dtype=p["tok_emb.weight"].dtype)[:, None]
        angle = position / 10000 ** (torch.arange(0, d, 2, dtype=position.dtype) / d)
        pe = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(T, d)
    x = (math.sqrt(d) if scale_embedding else 1.0) * p["tok_emb.weight"][idx] + pe

    def normalise(x, name, param):  # modded-nanogpt's F.rms_norm at torch's default eps, or GPT-2's LayerNorm
        if norm == "rmsnorm":
            return F.rms_norm(x, (d,))
        return F.layer_norm(x, (d,), param(f"{name}.weight"), param(f"{name}.bias"), eps=1e-5)

    def linear(x, name, param):  # x W + b, or x W without biases
        return x @ param(f"{name}.weight") + param(f"{name}.bias") if bias else x @ param(f"{name}.weight")

    for i in range(n_layer):
        b = lambda name: p[f"blocks.{i}.{name}"]  # noqa: E731
        h = normalise(x, "ln1", b)
        q, k, v = linear(h, "attn.qkv", b).split(d, dim=-1)
        q, k, v = (t.reshape(B, T, n_head, d // n_head).transpose(1, 2) for t in (q, k, v))
        if qk_norm:  # modded-nanogpt: q, k = norm(q), norm(k) over each head's dimensions
            q, k = F.rms_norm(q, (hd,)), F.rms_norm(k, (hd,))
        if positions == "rotary":  # modded-nanogpt's Rotary: the halves of each head paired
            q, k = (torch.cat([t[..., :hd // 2] * cos + t[..., hd // 2:] * sin,
                               t[..., hd // 2:] * cos - t[..., :hd // 2] * sin], dim=-1) for t in (q, k))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + linear(y.transpose(1, 2).reshape(B, T, d), "attn.proj", b)
        h = normalise(x, "ln2", b)
        h = linear(h, "ffn.fc", b)
        h = F.gelu(h, approximate="tanh") if activation == "gelu" else F.relu(h).square()
        x = x + linear(h, "ffn.proj", b)
    x = normalise(x, "ln_f", lambda name: p[name])
    logits = x @ (p["tok_emb.weight"] if tie_head else p["head.weight"]).T
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))


def torch_muon_step(p, g, buf, lr, momentum=0.95, steps=5):
    """modded-nanogpt's Muon step on a PyTorch (out, in) weight p, in place: momentum with
    Nesterov, five quintic Newton–Schulz steps on the normalised matrix (transposed when taller
    than wide), the update scaled by √max(1, rows/cols)."""
    buf.mul_(momentum).add_(g)
    x = g.add(buf, alpha=momentum)
    x = x / (x.norm() + 1e-7)
    if x.size(0) > x.size(1):
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        B = -4.7750 * A + 2.0315 * A @ A
        x = 3.4445 * x + B @ x
    if g.size(0) > g.size(1):
        x = x.T
    p.add_(x, alpha=-lr * max(1, p.size(0) / p.size(1)) ** 0.5)
