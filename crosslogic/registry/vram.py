"""VRAM estimate of a model template, and the check that a placement fits its accelerator.

The estimate, per GPU, for tensor-parallel size `tp`:

    weights_bytes  = parameter_count x bytes_per_weight(dtype)
    kv_cache_bytes = 2 (K and V) x num_layers x num_kv_heads x head_dim x bytes_per_kv_element
                     x max_model_len x max_num_seqs
    per_gpu_bytes  = (weights_bytes + kv_cache_bytes) / tp + OVERHEAD_BYTES_PER_GPU

- bytes_per_weight: float32 4, float16/bfloat16 2, fp8/int8 1, int4 0.5.
- bytes_per_kv_element: 4 for float32 models, else 2 — quantised weights still keep a 16-bit KV cache
  (vLLM's default `kv_cache_dtype="auto"` follows the activation dtype).
- max_num_seqs is the sequence budget: how many full-length sequences must fit at once. The default 1
  is the least an engine needs to serve one request of `max_model_len` tokens.
- OVERHEAD_BYTES_PER_GPU = 2 GiB: CUDA context and allocator (~0.5-1 GiB), cuBLAS/attention workspaces
  and the activation peak of a prefill pass, which vLLM measures at start-up and which stays around or
  below this for the models we serve.

A placement fits when per_gpu_bytes <= accelerator memory x GPU_MEMORY_UTILIZATION (0.90, vLLM's default
`gpu_memory_utilization`: the engine never plans to use the last 10 %). Without the attention shape
(num_layers, num_kv_heads, head_dim) the KV term is unknown and the estimate is a lower bound.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from crosslogic.errors import InvalidRequestError
from crosslogic.registry.templates import ModelTemplate

GIB = 1024**3
OVERHEAD_BYTES_PER_GPU = 2 * GIB
GPU_MEMORY_UTILIZATION = 0.90

BYTES_PER_WEIGHT: dict[str, float] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
}


class AcceleratorSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    memory_gib: float = Field(gt=0)


# Memory as the vendor sells it ("80 GB" parts carry 80 GiB of HBM).
ACCELERATORS: dict[str, AcceleratorSpec] = {
    spec.name: spec
    for spec in (
        AcceleratorSpec(name="T4", memory_gib=16),
        AcceleratorSpec(name="V100-16GB", memory_gib=16),
        AcceleratorSpec(name="V100-32GB", memory_gib=32),
        AcceleratorSpec(name="L4", memory_gib=24),
        AcceleratorSpec(name="A10G", memory_gib=24),
        AcceleratorSpec(name="A10", memory_gib=24),
        AcceleratorSpec(name="L40S", memory_gib=48),
        AcceleratorSpec(name="A100-40GB", memory_gib=40),
        AcceleratorSpec(name="A100-80GB", memory_gib=80),
        AcceleratorSpec(name="H100-80GB", memory_gib=80),
        AcceleratorSpec(name="H200-141GB", memory_gib=141),
    )
}
# Names SkyPilot and people commonly use for the same parts.
# Ray's `accelerator_type` values (ray.util.accelerators) are included, e.g. "A100-80G".
_ALIASES = {
    "A100": "A100-40GB",
    "A100-40G": "A100-40GB",
    "A100-80G": "A100-80GB",
    "H100": "H100-80GB",
    "H200": "H200-141GB",
    "V100": "V100-16GB",
}


class VramEstimate(BaseModel):
    weights_bytes: int
    # None when the template lacks the attention shape (the estimate is then a lower bound).
    kv_cache_bytes: int | None
    overhead_bytes_per_gpu: int
    tensor_parallel_size: int
    max_num_seqs: int
    per_gpu_bytes: int
    total_bytes: int
    is_lower_bound: bool

    @property
    def per_gpu_gib(self) -> float:
        return self.per_gpu_bytes / GIB


def resolve_accelerator(name: str) -> AcceleratorSpec:
    key = _ALIASES.get(name.upper(), name.upper())
    for spec_name, spec in ACCELERATORS.items():
        if spec_name.upper() == key:
            return spec
    known = ", ".join(ACCELERATORS)
    raise InvalidRequestError(
        f"unknown accelerator {name!r}; known accelerators: {known}",
        param="accelerator",
        code="unknown_accelerator",
    )


def estimate_vram(template: ModelTemplate, *, max_num_seqs: int = 1) -> VramEstimate:
    if max_num_seqs < 1:
        raise InvalidRequestError("max_num_seqs must be >= 1", param="max_num_seqs")
    weights = int(template.parameter_count * BYTES_PER_WEIGHT[template.dtype])
    kv: int | None = None
    if template.num_layers and template.num_kv_heads and template.head_dim:
        kv_element = 4 if template.dtype == "float32" else 2
        kv = (
            2
            * template.num_layers
            * template.num_kv_heads
            * template.head_dim
            * kv_element
            * template.max_model_len
            * max_num_seqs
        )
    tp = template.tensor_parallel_size
    sharded = weights + (kv or 0)
    per_gpu = -(-sharded // tp) + OVERHEAD_BYTES_PER_GPU
    return VramEstimate(
        weights_bytes=weights,
        kv_cache_bytes=kv,
        overhead_bytes_per_gpu=OVERHEAD_BYTES_PER_GPU,
        tensor_parallel_size=tp,
        max_num_seqs=max_num_seqs,
        per_gpu_bytes=per_gpu,
        total_bytes=sharded + OVERHEAD_BYTES_PER_GPU * tp,
        is_lower_bound=kv is None,
    )


def check_fits(
    template: ModelTemplate, accelerator: str | AcceleratorSpec, *, max_num_seqs: int = 1
) -> VramEstimate:
    """Return the estimate, or raise InvalidRequestError stating the numbers when it does not fit."""
    spec = resolve_accelerator(accelerator) if isinstance(accelerator, str) else accelerator
    estimate = estimate_vram(template, max_num_seqs=max_num_seqs)
    usable = spec.memory_gib * GIB * GPU_MEMORY_UTILIZATION
    if estimate.per_gpu_bytes > usable:
        kv = (
            f"{estimate.kv_cache_bytes / GIB:.1f} GiB KV cache "
            f"({template.max_model_len} tokens x {max_num_seqs} seqs)"
            if estimate.kv_cache_bytes is not None
            else "KV cache unknown (lower bound)"
        )
        tp = template.tensor_parallel_size
        raise InvalidRequestError(
            f"model {template.served_name!r} does not fit on {tp} x {spec.name}: needs "
            f"{estimate.per_gpu_gib:.1f} GiB per GPU ({estimate.weights_bytes / GIB:.1f} GiB weights "
            f"in {template.dtype} + {kv}, divided over tensor_parallel_size={tp}, + "
            f"{OVERHEAD_BYTES_PER_GPU / GIB:.1f} GiB overhead) but a {spec.name} offers "
            f"{usable / GIB:.1f} GiB usable ({spec.memory_gib:g} GiB x {GPU_MEMORY_UTILIZATION:.2f}); "
            "raise tensor_parallel_size, pick a larger accelerator, quantise, or lower max_model_len",
            param="accelerator",
            code="model_does_not_fit",
        )
    return estimate
