"""Peak memory of full fine-tuning against LoRA on the same GPT, side by side.

Each setting trains in a fresh process (peak RSS never goes down within one); the table
gives the trainable parameters, the optimizer's state and the process's peak RSS.

    python benchmarks/finetune_memory.py [--layers 6 --width 512 --steps 5]
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras, numpy as np
from theseus.model.models import GPT
from theseus.training import lora
mode, layers, width, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = GPT(vocab_size=8192, block_size=256, n_layer=layers, n_head=8, n_embd=width)
model.build((None, 256))
if mode == "lora":
    lora.enable_lora(model, 8, 16.0, ["attn", "mlp"])
model.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=True)
data = np.random.default_rng(0).integers(0, 8192, (8 * steps, 257)).astype("int32")
model.fit(data[:, :-1], data[:, 1:], batch_size=8, epochs=1, verbose=0)
print(json.dumps({"mode": mode, "parameters": lora.count(model.weights), "trainable": lora.count(model.trainable_weights),
                  "optimizer_mb": lora.count(model.optimizer.variables) * 4 / 2**20,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for mode in ("full", "lora"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(args.layers), str(args.width), str(args.steps)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"GPT {args.layers} layers, width {args.width}, vocab 8192, seq 256, batch 8, fp32, JAX CPU; LoRA rank 8 on attn+mlp"
    )
    print("| mode | parameters | trainable | optimizer state (MB) | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['parameters']:,} | {r['trainable']:,} | {r['optimizer_mb']:.1f} | {r['peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
