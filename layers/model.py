"""The nano2 decoder: √d · E[idx] + sinusoidal positions (or GPT-2's E[idx] + learned ones),
L pre-LN blocks, a final LayerNorm (or RMSNorm), and logits through the embedding's own matrix
(the tied head; or a head of its own); mean cross-entropy on top.

Backward runs the same layers in reverse. With the tied head the only join is E: the head's
gradient and the embedding's both add into one buffer, which is what tying means for the gradient.
"""
import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from engine.params import ParameterStore
from layers.block import Block, make_norm
from layers.embedding import TiedHead, TokenEmbedding, UntiedHead
from layers.positions import LearnedPositions, SinusoidalPositions
from layers.rotary import RotaryPositions
from layers.xent import CrossEntropy


POSITIONS = ("sinusoidal", "learned", "rotary")


@dataclass
class ModelConfig:
    """The model's shape, nanoGPT's GPTConfig: the one value the Decoder, its parameter table,
    checkpoints and the timing results read it from. train.config.Config extends it with the
    run's keys, so a run's config is a ModelConfig too."""
    vocab_size: int = 256
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_ff: int = 512
    seq_len: int = 128            # the longest sequence; the position table has this many rows
    positions: str = "sinusoidal"  # "sinusoidal" (computed), "learned" (GPT-2's, pos_emb.weight) or "rotary"
    rope_base: float = 10000.0    # rotary positions' base: θ_i = rope_base^(-2i/head_size)
    scale_embedding: bool = True  # x = √d · E[idx] (nano2), or E[idx] (GPT-2)
    activation: str = "gelu"      # the MLP's: "gelu" (GPT-2's tanh GELU) or "relu2" (modded-nanogpt's)
    norm: str = "layernorm"       # "layernorm" (GPT-2's) or "rmsnorm" (modded-nanogpt's, no parameters)
    bias: bool = True             # the linear layers' biases; false drops them all (modded-nanogpt)
    tie_head: bool = True         # the head reads tok_emb.weight; false gives it head.weight (V, d) of its own
    zero_init_proj: bool = False  # the output projections (and an untied head) start at zero (modded-nanogpt)
    qk_norm: bool = False         # RMSNorm of each head's q and k before attention (modded-nanogpt)

    def model_config(self):
        """The model's keys alone (of a run's Config too), as a ModelConfig."""
        return ModelConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)})


def parameter_shapes(config):
    """(name, shape) of every parameter of a model of `config`'s shape, in checkpoint order
    (DESIGN.md's table)."""
    d, d_ff = config.d_model, config.d_ff
    shapes = [("tok_emb.weight", (config.vocab_size, d))]
    if config.positions == "learned":
        shapes.append(("pos_emb.weight", (config.seq_len, d)))
    for i in range(config.n_layer):
        p = f"blocks.{i}"
        shapes += [
            *norm_shapes(config, f"{p}.ln1"),
            *linear_shapes(config, f"{p}.attn.qkv", d, 3 * d),
            *linear_shapes(config, f"{p}.attn.proj", d, d),
            *norm_shapes(config, f"{p}.ln2"),
            *linear_shapes(config, f"{p}.ffn.fc", d, d_ff),
            *linear_shapes(config, f"{p}.ffn.proj", d_ff, d),
        ]
    shapes += norm_shapes(config, "ln_f")
    return shapes + ([] if config.tie_head else [("head.weight", (config.vocab_size, d))])


def linear_shapes(config, name, n_in, n_out):
    """A linear layer's weight (in, out), and its bias where the model has biases."""
    return [(f"{name}.weight", (n_in, n_out))] + ([(f"{name}.bias", (n_out,))] if config.bias else [])


def norm_shapes(config, name):
    """A LayerNorm's weight and bias; an RMSNorm has none."""
    d = config.d_model
    return [(f"{name}.weight", (d,)), (f"{name}.bias", (d,))] if config.norm == "layernorm" else []


def parameter_names(layer):
    """The store names of the parameters whose gradients `layer`'s backward writes: those it
    says it owns (`parameter_names`: Linear, LayerNorm, the embedding and the tied head) and
    its children's."""
    names = list(getattr(layer, "parameter_names", ()))
    for child in getattr(layer, "children", ()):
        names += parameter_names(child)
    return names


def hidden_matrices(model):
    """The blocks' 2-D weights, which Muon updates: the attention's and the MLP's linears (not the
    embedding, the positions or the head, which stay with AdamW, as every vector does)."""
    return [name for block in model.blocks for name in parameter_names(block) if len(model.store.shapes[name]) == 2]


def learning_rate_groups(store):
    """The parameters that modded-nanogpt gives AdamW rates of their own, by group: "embedding"
    (the token table, and learned positions), "head" (an untied head) and "vector" (every 1-D
    parameter); the rest run at the base rate."""
    groups = {}
    for name, shape in store.shapes.items():
        if name in ("tok_emb.weight", "pos_emb.weight"):
            groups[name] = "embedding"
        elif name == "head.weight":
            groups[name] = "head"
        elif len(shape) == 1:
            groups[name] = "vector"
    return groups


def init_parameters(store, n_layer, seed, zero_init_proj=False):
    """GPT-2's init: weights N(0, 0.02), the residual output projections N(0, 0.02/√(2L)) so the
    residual stream's variance does not grow with depth, biases 0, LayerNorm weights 1; with
    zero_init_proj the projections and an untied head start at 0 (modded-nanogpt's record 5: each
    block then starts as the identity). Drawn in float64 on the host from `seed`, so every dtype
    and device starts from the same model."""
    rng = np.random.default_rng(seed)
    for name, shape in store.shapes.items():
        projection = name.endswith("attn.proj.weight") or name.endswith("ffn.proj.weight")
        if name.endswith("ln1.weight") or name.endswith("ln2.weight") or name == "ln_f.weight":
            value = np.ones(shape)
        elif name.endswith(".bias") or (zero_init_proj and (projection or name == "head.weight")):
            value = np.zeros(shape)
        elif projection:
            value = rng.normal(0.0, 0.02 / math.sqrt(2 * n_layer), shape)
        else:
            value = rng.normal(0.0, 0.02, shape)
        store.params[name][...] = store.xp.asarray(value, dtype=store.dtype)


class Decoder:
    def __init__(self, config, dtype=np.float32, xp=np, store=None):
        self.config = config = config.model_config()
        self.xp = xp
        self.store = store or ParameterStore(parameter_shapes(config), dtype, xp)
        self.embedding = TokenEmbedding(self.store, "tok_emb", config.scale_embedding)
        if config.positions == "learned":
            self.positions = LearnedPositions(self.store)
        elif config.positions == "rotary":
            self.positions = RotaryPositions(config.seq_len, config.d_model // config.n_head, config.rope_base,
                                             self.store.dtype, xp)
        else:
            self.positions = SinusoidalPositions(config.seq_len, config.d_model, self.store.dtype, xp)
        rotary = self.positions if config.positions == "rotary" else None
        self.blocks = [Block(self.store, f"blocks.{i}", config, rotary) for i in range(config.n_layer)]
        self.ln_f = make_norm(self.store, "ln_f", config.norm)
        self.head = TiedHead(self.embedding) if config.tie_head else UntiedHead(self.store)
        self.xent = CrossEntropy()

    def named_layers(self):
        """(name, layer) for every layer, each composite before its children, in forward order.
        Tools that time or trace layers wrap these objects' forward and backward."""
        def walk(layer):
            yield layer.name, layer
            for child in getattr(layer, "children", ()):
                yield from walk(child)
        for layer in (self.embedding, self.positions, *self.blocks, self.ln_f, self.head, self.xent):
            yield from walk(layer)

    def forward(self, idx, targets=None):
        """Logits (B, T, V), and the mean loss when targets are given (else None)."""
        if idx.shape[1] > self.config.seq_len:
            raise ValueError(f"sequence of {idx.shape[1]} tokens is longer than seq_len {self.config.seq_len}")
        x = self.positions.forward(self.embedding.forward(idx))
        for block in self.blocks:
            x = block.forward(x)
        logits = self.head.forward(self.ln_f.forward(x))
        loss = None if targets is None else self.xent.forward(logits, targets)
        return logits, loss

    def new_kv_cache(self, batch_size):
        """Per block, room for the keys and values of seq_len positions (for forward_cached)."""
        c = self.config
        shape = (batch_size, c.n_head, c.seq_len, c.d_model // c.n_head)
        return [{"k": self.xp.zeros(shape, self.store.dtype), "v": self.xp.zeros(shape, self.store.dtype)}
                for _ in self.blocks]

    def forward_cached(self, idx, kv_cache, start):
        """Inference: logits for tokens at positions start.., reusing the keys and values of the
        earlier positions in kv_cache, so generating a token costs one position, not all of them."""
        if start + idx.shape[1] > self.config.seq_len:
            raise ValueError(f"positions up to {start + idx.shape[1]} exceed seq_len {self.config.seq_len}")
        x = self.positions.forward(self.embedding.forward(idx), start)
        for block, block_cache in zip(self.blocks, kv_cache):
            x = block.forward_cached(x, block_cache, start)
        return self.head.forward(self.ln_f.forward(x))

    def gradient_buckets(self):
        """{layer name: (start, stop)} of the flat gradient buffer for each name backward passes
        to grads_ready (tok_emb, with the learned positions, each block, ln_f where it has
        parameters, an untied head): contiguous, as the store lays them out."""
        buckets = {}
        own_head = () if self.config.tie_head else (self.head,)
        for name, layers in ((self.embedding.name, (self.embedding, self.positions)),
                             *((layer.name, (layer,)) for layer in (*self.blocks, self.ln_f, *own_head))):
            spans = [self.store.span(p) for layer in layers for p in parameter_names(layer)]
            if spans:
                buckets[name] = (min(s.start for s in spans), max(s.stop for s in spans))
        return buckets

    def backward(self, dloss=1.0, grads_ready=None):
        """Add dloss · d loss / d parameter into the store's gradient buffer (call forward with
        targets first); dloss = 1/k averages the gradients of k accumulated micro-batches.
        grads_ready(name), if given, is called as soon as the gradients of an untied head, ln_f,
        each block and tok_emb (and the learned positions) are final, so their allreduce can start
        while backward goes on."""
        notify = grads_ready or (lambda name: None)
        dh = self.head.backward(self.xent.backward(dloss))
        if not self.config.tie_head:
            notify(self.head.name)
        dx = self.ln_f.backward(dh)
        if self.ln_f.parameter_names:
            notify(self.ln_f.name)
        for block in reversed(self.blocks):
            dx = block.backward(dx)
            notify(block.name)
        self.embedding.backward(self.positions.backward(dx))
        notify(self.embedding.name)
