"""Rated peak FLOP/s of the device a run trains on: the one table MFU reads.

Accelerators by name (`RATED_PEAK`, the vendors' dense figures); CPUs by what
`/proc/cpuinfo` says: float32 lanes of the widest vector unit (AVX-512 16, AVX2 with FMA 8),
times 2 FMA units per core (AMD Zen 2-4 and Intel server cores with AVX2 or AVX-512 have two),
times 2 FLOPs per fused multiply-add, times the clock, times the physical cores the process
may run on (XLA's and PyTorch's CPU thread pools use them all). The clock is the maximum of
`cpufreq` when the kernel exposes it, else the GHz of the model name, else `cpu MHz`, which
under a hypervisor is the nominal clock: a CPU that boosts above it can then run a matmul
faster than its rating. A CPU that is neither (ARM, SSE only) has no rating (0.0).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

RATED_PEAK: dict[str, dict[str, float]] = {
    # dense FLOP/s per device from the vendors' data sheets, by device name substring (the first
    # match wins, so a longer name comes first); float32 is what a float32 matmul runs at under
    # JAX's default precision: TF32 tensor cores on NVIDIA Ampere and later, bfloat16 passes on TPUs
    "H200": {"bfloat16": 989e12, "float32": 494.5e12},
    "H100 PCIe": {"bfloat16": 756e12, "float32": 378e12},
    "H100": {"bfloat16": 989e12, "float32": 494.5e12},  # SXM
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "L40S": {"bfloat16": 362e12, "float32": 183e12},
    "L4": {"bfloat16": 121e12, "float32": 60e12},
    "A10": {"bfloat16": 125e12, "float32": 62.5e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
}
FMA_UNITS = 2
"""Vector FMA units per CPU core (two on the AVX2 / AVX-512 server cores theseus is run on)."""
CPUINFO = Path("/proc/cpuinfo")
MAX_FREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")


def accelerator() -> str | None:
    """The name of the first accelerator of the Keras backend (`NVIDIA H100 80GB HBM3`), None on a CPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return None if device.platform == "cpu" else str(getattr(device, "device_kind", device))
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else None
    return None


def accelerator_peak(name: str, dtype: str = "bfloat16") -> float:
    """The rated dense FLOP/s of the accelerator called `name` in `dtype` (0.0 when not in `RATED_PEAK`)."""
    peaks = next((peaks for key, peaks in RATED_PEAK.items() if key in name), {})
    return peaks.get(dtype, 0.0)


def cpu_peak(cpuinfo: str | None = None, max_freq_khz: float | None = None, cpus: int | None = None) -> float:
    """The rated float32 FLOP/s of this machine's CPUs (see the module docstring); 0.0 when unknown.

    The arguments replace what is read from `/proc/cpuinfo`, `cpufreq` and the process's
    CPU affinity. XLA's CPU backend computes a bfloat16 matmul in float32: the same peak.
    """
    text = cpuinfo if cpuinfo is not None else (CPUINFO.read_text() if CPUINFO.is_file() else "")
    first = text.split("\n\n")[0]
    flags = set(_field(first, "flags").split())
    lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 0
    if max_freq_khz is None and MAX_FREQ.is_file():
        max_freq_khz = float(MAX_FREQ.read_text())
    named = re.search(r"([\d.]+)\s*GHz", _field(first, "model name"))
    hertz = (
        max_freq_khz * 1e3
        if max_freq_khz
        else float(named.group(1)) * 1e9
        if named
        else float(_field(first, "cpu MHz") or 0) * 1e6
    )
    logical = cpus if cpus is not None else len(os.sched_getaffinity(0))
    siblings, cores = int(_field(first, "siblings") or 1), int(_field(first, "cpu cores") or 1)
    physical = max(1, logical * cores // max(siblings, cores))  # hyper-threads share their core's FMA units
    return lanes * FMA_UNITS * 2 * hertz * physical


def _field(block: str, name: str) -> str:
    """The value of the `name : value` line of a `/proc/cpuinfo` block ('' when absent)."""
    match = re.search(rf"^{re.escape(name)}\s*:\s*(.*)$", block, re.MULTILINE)
    return match.group(1).strip() if match else ""


def rated_peak(dtype: str = "float32") -> tuple[float, str]:
    """The rated FLOP/s of one device of this run in `dtype`, and what it is (0.0 and '' when unknown)."""
    name = accelerator()
    if name is not None:
        peak = accelerator_peak(name, dtype)
        return peak, (f"{name}, rated {dtype}" if peak else "")
    peak = cpu_peak()
    return peak, ("CPU, rated from its vector width, clock and cores" if peak else "")
