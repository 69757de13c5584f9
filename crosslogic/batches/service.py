"""The Batch API as one ingress replica runs it: the stores its routes use, and a runner working
through batches beside the interactive traffic it serves (every replica runs one; they share the work
through PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

from crosslogic.api.gateway import Gateway
from crosslogic.batches.config import BatchesConfig
from crosslogic.batches.credentials import BatchCredentials, KeyRecheck
from crosslogic.batches.engine_lines import EngineLineExecutor, InteractiveLoad, LedgerWriter
from crosslogic.batches.engine_room import EngineLoads, EngineRoom, batch_capacity
from crosslogic.batches.file_storage import LocalFileStorage
from crosslogic.batches.files import FileStore
from crosslogic.batches.runner import BatchRunner
from crosslogic.batches.store import BatchStore
from crosslogic.config import ModelDeploymentConfig
from crosslogic.storage.executor import Executor
from crosslogic.supervisor import LoopRestarts, supervise


class BatchService:
    def __init__(
        self, db: Executor, config: BatchesConfig, *, home: Path, gateway: Gateway, usage: LedgerWriter,
        region: str, retries: int, keys: KeyRecheck | None = None, engine_loads: EngineLoads | None = None,
        models: Sequence[ModelDeploymentConfig] = (),
    ) -> None:
        self.files = FileStore(
            db, LocalFileStorage(config.files_dir or home / "files"),
            max_bytes=config.max_file_bytes, max_lines=config.max_file_lines)
        self.batches = BatchStore(db)
        # Interactive requests go through this one, so batch lines see how busy they keep the engines.
        # and (with the router's view of the engines) how busy all traffic keeps them.
        room = None
        if engine_loads is not None:
            room = EngineRoom(
                engine_loads, {m.served_name: batch_capacity(m, config.default_engine_batch_capacity) for m in models},
                busy_fraction=config.engine_busy_fraction, default_capacity=config.default_engine_batch_capacity)
        self.gateway = InteractiveLoad(
            gateway, config.interactive_busy_threshold, room.has_room if room is not None else None)
        executor = EngineLineExecutor(
            gateway, usage, region=region, retries=retries, price_multiplier=config.price_multiplier)
        self.runner = BatchRunner(
            self.batches, self.files, executor, config, capacity=self.gateway,
            credentials=BatchCredentials(db, keys) if keys is not None else None)
        self._task: asyncio.Task[None] | None = None

    def start(self, restarts: LoopRestarts | None = None) -> None:
        self._task = asyncio.get_running_loop().create_task(
            supervise("batch_runner", self.runner.run_forever, restarts=restarts))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
