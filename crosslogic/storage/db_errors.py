"""Driver errors become CrossLogic errors at the storage edge.

Repositories wrap their statements in `translate_db_errors(...)` so callers (admin API, CLI) only see
`crosslogic.errors` classes with a message fit for a client: a duplicate is a 409, a dangling
reference a 404, a violated constraint a 400, a lost database a 503. Nothing here leaks SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from crosslogic.errors import (
    ConflictError,
    CrossLogicError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)

# Lost or unusable connections: the client did nothing wrong and may retry.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    ConnectionError,
    TimeoutError,
)


@contextmanager
def translate_db_errors(
    *, conflict: str | None = None, not_found: str | None = None, param: str | None = None
) -> Iterator[None]:
    """Map asyncpg exceptions raised inside the block to client-facing errors.

    `conflict` / `not_found` are the messages for unique and foreign-key violations, e.g.
    "a tenant named 'acme' already exists" -- the caller knows what the row means, the driver not.
    """
    try:
        yield
    except CrossLogicError:
        raise
    except asyncpg.UniqueViolationError as exc:
        raise ConflictError(conflict or _constraint_message("already exists", exc), param=param) from exc
    except asyncpg.ForeignKeyViolationError as exc:
        raise NotFoundError(not_found or _constraint_message("refers to a missing row", exc), param=param) from exc
    except (
        asyncpg.CheckViolationError,
        asyncpg.NotNullViolationError,
        asyncpg.DataError,
    ) as exc:
        raise InvalidRequestError(_constraint_message("is not a valid value", exc), param=param) from exc
    except asyncpg.QueryCanceledError as exc:
        raise ServiceUnavailableError("the database took too long to answer; retry") from exc
    except _UNAVAILABLE as exc:
        raise ServiceUnavailableError("the database is unavailable; retry shortly") from exc


def _constraint_message(what: str, exc: asyncpg.PostgresError) -> str:
    # Column or constraint names are part of our public schema vocabulary; values and SQL are not.
    column = getattr(exc, "column_name", None)
    constraint = getattr(exc, "constraint_name", None)
    subject = column or constraint or "value"
    return f"{subject} {what}"
