"""Send the core's log records to the replica's Serve log, where operators look for them.

Ray Serve writes only the `ray.serve` logger to a replica's log file (shown per replica in the Ray
dashboard); records of `crosslogic.*` and `billing.*` would otherwise land in the worker's raw
stderr file, or nowhere below WARNING. Called at the top of each deployment's constructor.
"""

from __future__ import annotations

import logging

CORE_LOGGERS = ("crosslogic", "billing")


def route_core_logs(level: int = logging.INFO) -> None:
    serve_logger = logging.getLogger("ray.serve")
    for name in CORE_LOGGERS:
        core = logging.getLogger(name)
        core.setLevel(level)
        for handler in serve_logger.handlers:
            if handler not in core.handlers:
                core.addHandler(handler)
        core.propagate = False  # once, in the replica log; not again on stderr
