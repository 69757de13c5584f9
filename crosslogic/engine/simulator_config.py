"""Settings of the engine simulator (crosslogic/engine/simulator.py): a model's `engine.simulator`.

Kept apart from the simulator so crosslogic/config.py can use it without importing the engine
interface (which imports the config).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SimulatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Prompt tokens one replica prefills per second (all sequences of a step together).
    prefill_tokens_per_s: float = Field(default=8000.0, gt=0)
    # One decode step (a token for every running sequence) takes 1 / decode_tokens_per_s seconds at
    # batch 1, plus decode_batch_cost of that per extra sequence in the batch.
    decode_tokens_per_s: float = Field(default=50.0, gt=0)
    decode_batch_cost: float = Field(default=0.02, ge=0)
    # Sequences decoded together (vLLM's max_num_seqs) and prompt tokens prefilled per step
    # (max_num_batched_tokens: a long prompt is prefilled in chunks between decode steps).
    max_batch: int = Field(default=32, ge=1)
    max_batched_tokens: int = Field(default=2048, ge=16)
    # KV cache size in tokens: running sequences need room for theirs; the rest keeps the prefix
    # cache, an LRU of blocks of block_tokens, keyed by chained block hashes as vLLM's.
    kv_cache_tokens: int = Field(default=65_536, ge=16)
    block_tokens: int = Field(default=16, ge=1)
    # No tokenizer: a token is this many characters of the rendered prompt.
    chars_per_token: int = Field(default=4, ge=1)
    max_model_len: int = Field(default=8192, ge=16)
    # Completion tokens when the request sets no max_tokens.
    default_max_tokens: int = Field(default=64, ge=1)
    # As vLLM's stream_interval: a stream gets its tokens every this many (the first and the last at
    # once). Benchmarks that only time first tokens raise it to spend less CPU per token.
    stream_interval: int = Field(default=1, ge=1)
    # Heterogeneous fleets in one deployment: replica of rank i runs at speed_factors[i % len] times
    # the speeds above (empty: all at 1.0).
    speed_factors: list[float] = Field(default_factory=list)
