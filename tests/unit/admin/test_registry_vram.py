"""VRAM estimate formula and the fit check against the accelerator table."""

from __future__ import annotations

import pytest

from crosslogic.errors import InvalidRequestError
from crosslogic.registry.templates import ModelTemplate
from crosslogic.registry.vram import (
    GIB,
    OVERHEAD_BYTES_PER_GPU,
    check_fits,
    estimate_vram,
    resolve_accelerator,
)

LLAMA_70B = ModelTemplate(
    served_name="llama-3.1-70b",
    source="meta-llama/Llama-3.1-70B-Instruct",
    parameter_count=70_553_706_496,
    dtype="bfloat16",
    max_model_len=8192,
    num_layers=80,
    num_kv_heads=8,
    head_dim=128,
)
LLAMA_8B = ModelTemplate(
    served_name="llama-3.1-8b",
    source="meta-llama/Llama-3.1-8B-Instruct",
    parameter_count=8_030_261_248,
    dtype="bfloat16",
    max_model_len=8192,
    num_layers=32,
    num_kv_heads=8,
    head_dim=128,
)


def test_formula_terms() -> None:
    estimate = estimate_vram(LLAMA_8B, max_num_seqs=4)
    assert estimate.weights_bytes == 8_030_261_248 * 2
    assert estimate.kv_cache_bytes == 2 * 32 * 8 * 128 * 2 * 8192 * 4  # 4 GiB
    assert estimate.per_gpu_bytes == estimate.weights_bytes + estimate.kv_cache_bytes + OVERHEAD_BYTES_PER_GPU
    sharded = estimate_vram(LLAMA_8B.model_copy(update={"tensor_parallel_size": 2}), max_num_seqs=4)
    assert sharded.per_gpu_bytes == (estimate.weights_bytes + estimate.kv_cache_bytes) // 2 + OVERHEAD_BYTES_PER_GPU
    assert sharded.total_bytes == estimate.weights_bytes + estimate.kv_cache_bytes + 2 * OVERHEAD_BYTES_PER_GPU


def test_quantised_weights_keep_a_16_bit_kv_cache() -> None:
    int4 = estimate_vram(LLAMA_8B.model_copy(update={"dtype": "int4"}))
    assert int4.weights_bytes == 8_030_261_248 // 2
    assert int4.kv_cache_bytes == estimate_vram(LLAMA_8B).kv_cache_bytes


def test_unknown_attention_shape_is_a_lower_bound() -> None:
    shapeless = LLAMA_8B.model_copy(update={"num_layers": None, "num_kv_heads": None, "head_dim": None})
    estimate = estimate_vram(shapeless)
    assert estimate.kv_cache_bytes is None and estimate.is_lower_bound


def test_70b_bf16_on_one_80gb_gpu_is_refused_with_numbers() -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_fits(LLAMA_70B, "H100-80GB")
    error = info.value
    assert error.status_code == 400 and error.param == "accelerator" and error.code == "model_does_not_fit"
    for number in ("135.9 GiB per GPU", "131.4 GiB weights", "2.5 GiB KV cache", "72.0 GiB usable"):
        assert number in error.message


def test_70b_fits_with_tensor_parallelism_and_8b_on_one_l4() -> None:
    estimate = check_fits(LLAMA_70B.model_copy(update={"tensor_parallel_size": 4}), "H100")
    assert 30 * GIB < estimate.per_gpu_bytes < 40 * GIB
    check_fits(LLAMA_8B, "L4")
    with pytest.raises(InvalidRequestError, match="T4"):
        check_fits(LLAMA_8B, "t4")  # 17 GiB needed, 14.4 GiB usable


def test_unknown_accelerator() -> None:
    with pytest.raises(InvalidRequestError, match="known accelerators: T4") as info:
        resolve_accelerator("TPU-v5")
    assert info.value.param == "accelerator"
    assert resolve_accelerator("a100").name == "A100-40GB"
