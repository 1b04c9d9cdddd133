"""The same GPT written natively for each framework: the floors `throughput.py --floors` measures theseus against.

GPT-2's architecture as theseus's `GPT` has it (learned positions, pre-LayerNorm blocks with
biases, tanh-GELU MLP of width 4·d, tied embeddings, no dropout), trained with AdamW
(betas 0.9/0.95, eps 1e-8, weight decay 0.1, clipped to global norm 1.0) on mean next-token
cross-entropy, each the way a user of that framework writes it:

  - PyTorch, nanoGPT's way: one fused q/k/v projection, `scaled_dot_product_attention(is_causal=True)`,
    `torch.optim.AdamW` and `clip_grad_norm_`; run eagerly, or under `torch.compile`;
  - TensorFlow: `tf.Variable`s and a hand-written AdamW in one `tf.function(jit_compile=True)` step.

Each `*_step_times` function trains on the given batches and returns the wall time of every
step after `warmup` (each waits for its result).
"""

from __future__ import annotations

import math
import time


def torch_step_times(x, y, layers: int, width: int, heads: int, vocab: int, warmup: int, compile: bool = False):
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.c_attn, self.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.c_fc, self.mlp_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def forward(self, h):
            batch, length, _ = h.shape
            q, k, v = self.c_attn(self.ln_1(h)).split(width, dim=2)
            q, k, v = (t.view(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + self.c_proj(attended.transpose(1, 2).contiguous().view(batch, length, width))
            return h + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(h)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(x.shape[-1], width)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln_f = nn.LayerNorm(width)

        def forward(self, ids, targets):
            h = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
            for block in self.blocks:
                h = block(h)
            logits = self.ln_f(h) @ self.wte.weight.T
            return F.cross_entropy(logits.view(-1, vocab), targets.view(-1))

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = GPT().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

    def step(ids, targets):
        loss = model(ids, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    if compile:
        step = torch.compile(step)
    xs, ys = torch.from_numpy(x).long().to(device), torch.from_numpy(y).long().to(device)
    return _timed(lambda i: step(xs[i], ys[i]).item(), len(x), warmup)


def tensorflow_step_times(x, y, layers: int, width: int, heads: int, vocab: int, warmup: int):
    import tensorflow as tf

    tf.random.set_seed(0)
    head_dim, length = width // heads, x.shape[-1]

    def normal(*shape, std=0.02):
        return tf.Variable(tf.random.normal(shape, stddev=std))

    def zeros(*shape):
        return tf.Variable(tf.zeros(shape))

    def norm():
        return tf.Variable(tf.ones(width)), zeros(width)

    params = {"wte": normal(vocab, width), "wpe": normal(length, width, std=0.01), "ln_f": norm()}
    for i in range(layers):
        params[f"block_{i}"] = {
            "ln_1": norm(),
            "ln_2": norm(),
            "attn": (normal(width, 3 * width), zeros(3 * width), normal(width, width), zeros(width)),
            "mlp": (normal(width, 4 * width), zeros(4 * width), normal(4 * width, width), zeros(width)),
        }
    variables = tf.nest.flatten(params)
    slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in variables]
    causal = tf.linalg.band_part(tf.ones((length, length)), -1, 0) > 0

    def layer_norm(h, scale_shift):
        mean, var = tf.nn.moments(h, axes=[-1], keepdims=True)
        return (h - mean) * tf.math.rsqrt(var + 1e-5) * scale_shift[0] + scale_shift[1]

    def block(h, p):
        batch = tf.shape(h)[0]
        w_qkv, b_qkv, w_out, b_out = p["attn"]
        qkv = tf.reshape(layer_norm(h, p["ln_1"]) @ w_qkv + b_qkv, (batch, length, 3, heads, head_dim))
        q, k, v = (tf.transpose(qkv[:, :, i], (0, 2, 1, 3)) for i in range(3))
        scores = tf.where(causal, tf.matmul(q, k, transpose_b=True) / math.sqrt(head_dim), -1e30)
        attended = tf.transpose(tf.nn.softmax(scores) @ v, (0, 2, 1, 3))
        h = h + tf.reshape(attended, (batch, length, width)) @ w_out + b_out
        w_fc, b_fc, w_proj, b_proj = p["mlp"]
        return h + tf.nn.gelu(layer_norm(h, p["ln_2"]) @ w_fc + b_fc, approximate=True) @ w_proj + b_proj

    def loss_of(ids, targets):
        h = tf.gather(params["wte"], ids) + params["wpe"]
        for i in range(layers):
            h = block(h, params[f"block_{i}"])
        logits = tf.einsum("btc,vc->btv", layer_norm(h, params["ln_f"]), params["wte"])
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits))

    count = tf.Variable(0.0)

    @tf.function(jit_compile=True)
    def step(ids, targets):
        with tf.GradientTape() as tape:
            loss = loss_of(ids, targets)
        grads, _ = tf.clip_by_global_norm(tape.gradient(loss, variables), 1.0)
        count.assign_add(1.0)
        for var, grad, (m, v) in zip(variables, grads, slots):  # AdamW
            m.assign(0.9 * m + 0.1 * grad)
            v.assign(0.95 * v + 0.05 * tf.square(grad))
            update = (m / (1 - 0.9**count)) / (tf.sqrt(v / (1 - 0.95**count)) + 1e-8)
            var.assign_sub(3e-4 * (update + 0.1 * var))
        return loss

    xs, ys = tf.constant(x), tf.constant(y)
    return _timed(lambda i: float(step(xs[i], ys[i])), len(x), warmup)


def _timed(run_step, steps: int, warmup: int) -> list[float]:
    times = []
    for i in range(steps):
        start = time.perf_counter()
        run_step(i)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times
