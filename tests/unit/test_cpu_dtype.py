"""`dtype: auto` on a CPU: bf16 only where the CPU computes it natively."""

from __future__ import annotations

from pathlib import Path

import pytest

from crosslogic.engine.cpu_dtype import cpu_flags, resolve_dtype

AVX2_EPYC = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})
ZEN4 = AVX2_EPYC | {"avx512f", "avx512_bf16"}
SAPPHIRE_RAPIDS = AVX2_EPYC | {"avx512f", "amx_tile", "amx_bf16"}
GRAVITON3 = frozenset({"fp", "asimd", "sve", "bf16"})


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(AVX2_EPYC, "float32"), (ZEN4, "bfloat16"), (SAPPHIRE_RAPIDS, "bfloat16"), (GRAVITON3, "bfloat16"), (frozenset(), "float32")],
)
def test_auto_on_cpu_follows_native_bf16(flags: frozenset[str], expected: str) -> None:
    assert resolve_dtype("auto", on_cpu=True, flags=flags) == expected


@pytest.mark.parametrize("configured", ["bfloat16", "float16", "float32"])
def test_an_explicit_dtype_is_honoured(configured: str) -> None:
    assert resolve_dtype(configured, on_cpu=True, flags=AVX2_EPYC) == configured


def test_gpus_keep_vllms_auto() -> None:
    assert resolve_dtype("auto", on_cpu=False, flags=frozenset()) == "auto"


def test_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512_bf16"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
