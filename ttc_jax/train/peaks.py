"""Peak dense FLOP/s per device, the one table MFU is computed against.

Values are vendor dense (no sparsity) peaks for bf16 matmuls; float32 runs on GPUs/TPUs use the
same bf16 peak (the usual MFU convention, so MFU is comparable across precisions).
CPU: there is no vendor number; we use cores x clock x FLOPs/cycle/core for float32 FMA
(2 FMA units x 8 lanes x 2 = 32 FLOPs/cycle on AVX2, 64 with AVX-512), at the clock read from
/proc/cpuinfo or 2.5 GHz when unknown. This is an upper bound XLA:CPU never reaches; CPU MFU is indicative only.
"""

from __future__ import annotations

import os
import re

import jax

# device_kind substring (lower case) -> peak FLOP/s per device (bf16 dense)
PEAK_FLOPS = {
    "h200": 989e12,
    "h100": 989e12,  # SXM; PCIe is 756e12
    "a100": 312e12,
    "l40s": 362e12,
    "a10g": 125e12,
    "v100": 125e12,
    "tpu v6": 918e12,
    "tpu v5p": 459e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v4": 275e12,
    "tpu v3": 123e12,
}


def cpu_flops_per_cycle() -> int:
    """float32 FLOPs per cycle and core: 64 with AVX-512, else 32 (AVX2)."""
    try:
        with open("/proc/cpuinfo") as f:
            return 64 if " avx512f" in f.read() else 32
    except OSError:
        return 32


def _cpu_clock_hz() -> float:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        m = re.search(r"model name\s*:.*@\s*([\d.]+)GHz", text)
        if m:
            return float(m.group(1)) * 1e9
        m = re.search(r"cpu MHz\s*:\s*([\d.]+)", text)
        if m:
            return float(m.group(1)) * 1e6
    except OSError:
        pass
    return 2.5e9


def cpu_peak_flops(cores: int | None = None) -> float:
    """Nominal float32 peak of the CPU cores this process may use."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores * _cpu_clock_hz() * cpu_flops_per_cycle()


def device_peak_flops(device=None) -> float:
    """Peak FLOP/s of one device (CPU: of all usable cores, since XLA:CPU shares them among host devices)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return cpu_peak_flops() / max(1, len([d for d in jax.devices() if d.platform == "cpu"]))
    kind = device.device_kind.lower()
    for key, peak in PEAK_FLOPS.items():
        if key in kind:
            return peak
    raise ValueError(f"device kind {device.device_kind!r} is not in ttc_jax.train.peaks.PEAK_FLOPS; add its peak")


def total_peak_flops(devices=None) -> float:
    devices = devices or jax.devices()
    if devices[0].platform == "cpu":
        return cpu_peak_flops()
    return sum(device_peak_flops(d) for d in devices)
