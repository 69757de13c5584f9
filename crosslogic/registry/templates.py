"""Model templates: what an operator needs to know to deploy a model safely."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Weight storage formats the VRAM estimator understands (see `crosslogic.registry.vram`).
WeightDtype = Literal["float32", "float16", "bfloat16", "fp8", "int8", "int4"]
ModelTask = Literal["generate", "embed"]

# Prices are per million tokens with six decimals, matching numeric(14, 6) in the `models` table.
Price = Field(default=Decimal(0), ge=0, max_digits=14, decimal_places=6)


class ModelTemplate(BaseModel):
    """A model as the registry describes it, before it gets an id."""

    model_config = ConfigDict(extra="forbid")

    served_name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
    source: str = Field(min_length=1, max_length=1000, description="Hugging Face model id or path")
    task: ModelTask = "generate"
    parameter_count: int = Field(gt=0, le=10**13, description="Total parameters, e.g. 8030261248")
    dtype: WeightDtype
    max_model_len: int = Field(gt=0, le=10_000_000)
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    # Attention shape for the KV-cache term; unknown shape gives a lower-bound estimate.
    num_layers: int | None = Field(default=None, gt=0, le=10_000)
    num_kv_heads: int | None = Field(default=None, gt=0, le=10_000)
    head_dim: int | None = Field(default=None, gt=0, le=100_000)
    price_input_per_mtok: Decimal = Price
    price_output_per_mtok: Decimal = Price

    @model_validator(mode="after")
    def _attention_shape_all_or_nothing(self) -> ModelTemplate:
        given = [v is not None for v in (self.num_layers, self.num_kv_heads, self.head_dim)]
        if any(given) and not all(given):
            raise ValueError("num_layers, num_kv_heads and head_dim must be given together")
        return self


class ModelRecord(ModelTemplate):
    """A row of the `models` table."""

    id: UUID
    created_at: datetime
    updated_at: datetime
