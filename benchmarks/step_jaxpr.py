"""Fingerprint of the traced training step, to check that a refactor left the step alone.

    python benchmarks/step_jaxpr.py            # in each checkout to compare (e.g. a git worktree)

For GPT and Llama at the throughput benchmark's size (6 layers, width 256, vocabulary 8192,
batch 16 x 256), traces the loss and its gradients (`stateless_call` + `CausalLMLoss`)
with `jax.make_jaxpr` and prints a SHA-256 of the jaxpr (names stripped), its length and
a count of its operations. Equal hashes: the same program for XLA, so the same speed; equal
operation counts with another hash: the same operations in another order.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from theseus.model.models import GPT, Llama  # noqa: E402
from theseus.model.models.causal_lm import CausalLMLoss  # noqa: E402

MODELS = {
    "GPT": (GPT, {"n_layer": 6, "n_head": 4, "n_embd": 256}),
    "Llama": (Llama, {"n_layer": 6, "n_head": 4, "n_kv_head": 2, "n_embd": 256}),
}


def step_jaxpr(model_class: type, arguments: dict) -> str:
    model = model_class(vocab_size=8192, block_size=256, **arguments)
    model.build((None, 256))
    tokens, loss = jnp.zeros((16, 256), "int32"), CausalLMLoss()

    def value(trainable, non_trainable):
        logits, _ = model.stateless_call(trainable, non_trainable, tokens, training=True)
        return loss(tokens, logits)

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    return re.sub(r"name=\S+", "", str(jax.make_jaxpr(jax.value_and_grad(value))(trainable, non_trainable)))


def main() -> None:
    print("| model | jaxpr SHA-256 | characters | operations |\n|---|---|---|---|")
    for name, (model_class, arguments) in MODELS.items():
        text = step_jaxpr(model_class, arguments)
        operations = sum(collections.Counter(re.findall(r"= (\w+)", text)).values())
        print(f"| {name} | {hashlib.sha256(text.encode()).hexdigest()[:16]} | {len(text):,} | {operations:,} |")


if __name__ == "__main__":
    main()
