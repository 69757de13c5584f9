"""Which dtype an engine runs in on a CPU: bf16 only where the CPU computes bf16 natively.

vLLM's CPU build takes `dtype: auto` as the checkpoint's dtype (bf16 for most current models) on
any x86 CPU. Without AVX512-BF16 or AMX, bf16 matrix products are emulated and slow: on a 2-core
AVX2 EPYC (this project's CI class of machine) a 1024x1024 bf16 matmul runs at 0.8 GFLOPS against
101 GFLOPS in fp32, and SmolLM2-135M's time to first token goes from 0.27 s (fp32) to 0.86 s
(bf16), eight concurrent 3-token requests from 1.5 s to 7.5 s. So on a CPU, `auto` means bf16
where it is native and fp32 elsewhere. An explicit dtype in the config is always honoured; GPUs
keep vLLM's own `auto`.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

logger = logging.getLogger(__name__)

# x86: AVX512-BF16 (Cooper Lake, Zen 4+) or AMX (Sapphire Rapids+); Arm: the BF16 extension.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux `flags` on x86, `Features` on Arm); empty when unknown."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def resolve_dtype(configured: str, *, on_cpu: bool, flags: frozenset[str]) -> str:
    """The dtype to hand vLLM: `configured` unless it is `auto` on a CPU."""
    if configured != "auto" or not on_cpu:
        return configured
    return "bfloat16" if flags & NATIVE_BF16_FLAGS else "float32"


def engine_dtype(configured: str) -> str:
    """`resolve_dtype` for this process's platform, logged when `auto` was decided here."""
    from vllm.platforms import current_platform

    on_cpu = bool(current_platform.is_cpu())
    dtype = resolve_dtype(configured, on_cpu=on_cpu, flags=cpu_flags() if on_cpu else frozenset())
    if dtype != configured:
        native = "native" if dtype == "bfloat16" else "not native"
        logger.info("dtype auto on this %s CPU: %s (bf16 %s here)", platform.machine(), dtype, native)
    return dtype
