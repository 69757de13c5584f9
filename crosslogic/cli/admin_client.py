"""The CLI side of the admin HTTP API: client, token, tables and the options every command shares.

`--url` (or CROSSLOGIC_URL, default http://127.0.0.1:8000), `--token` (or CROSSLOGIC_ADMIN_TOKEN;
without one, a 5-minute token is minted from the local admin secret) and `--json`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from crosslogic.admin.local_secret import mint_admin_token, resolve_admin_secret
from crosslogic.errors import ConfigError
from crosslogic.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8000"
ADMIN_PATH = "/admin/v1"
CLI_TOKEN_TTL_S = 300

Show = Callable[[argparse.Namespace, Any], None]


class AdminApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class AdminClient:
    """A thin async client for `/admin/v1` that turns OpenAI-shaped errors into AdminApiError."""

    def __init__(
        self, base_url: str, token: str, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + ADMIN_PATH,
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
            transport=transport,
        )

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        response = await self._http.request(method, path, json=body, params=query)
        if response.is_success:
            return response.json()
        try:
            error = response.json()["error"]
            raise AdminApiError(response.status_code, str(error["message"]), error.get("code"))
        except (ValueError, KeyError, TypeError):
            raise AdminApiError(response.status_code, response.text[:200], None) from None


# --- output ----------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(all)"
    text = str(value)
    # Timestamps to the second: enough to read, and keeps the table narrow.
    if len(text) > 19 and text[10:11] == "T":
        return text[:19].replace("T", " ")
    return text


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def show_table(args: argparse.Namespace, result: Any, columns: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rows = result["data"] if isinstance(result, dict) and result.get("object") == "list" else [result]
    print(format_table(rows, columns))
    if isinstance(result, dict) and result.get("has_more"):
        print(f"(more: --after {result['last_id']})")


# --- running a command -----------------------------------------------------------------------


def whoami() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "operator"


def _token_for(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get("CROSSLOGIC_ADMIN_TOKEN")
    if token:
        return str(token)
    secret = resolve_admin_secret(Settings.from_env(), create_local=False)
    return mint_admin_token(secret, subject=f"cli:{whoami()}", ttl_s=CLI_TOKEN_TTL_S)


def _client(args: argparse.Namespace) -> AdminClient:
    url = args.url or os.environ.get("CROSSLOGIC_URL") or DEFAULT_URL
    # `transport` is only ever set by tests (an ASGI transport onto an in-process app).
    return AdminClient(url, _token_for(args), transport=getattr(args, "transport", None))


async def run_request(
    args: argparse.Namespace,
    method: str,
    path: str,
    columns: Sequence[str],
    *,
    show: Show | None = None,
    **kw: Any,
) -> int:
    """Call the API, print the result (table or JSON), and turn failures into one line + exit 1."""
    try:
        async with _client(args) as client:
            result = await client.call(method, path, **kw)
    except AdminApiError as exc:
        print(f"error ({exc.status} {exc.code}): {exc.message}", file=sys.stderr)
        return 1
    except (ConfigError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if show is not None:
        show(args, result)
    else:
        show_table(args, result, columns)
    return 0


# --- shared options --------------------------------------------------------------------------


def http_options() -> argparse.ArgumentParser:
    """A parent parser with --url / --token / --json."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"CrossLogic base URL (env CROSSLOGIC_URL, default {DEFAULT_URL})")
    common.add_argument("--token", help="admin JWT (env CROSSLOGIC_ADMIN_TOKEN; default: mint a local one)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return common


def page_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=20, help="page size (1-100)")
    parser.add_argument("--after", help="continue after this id (printed at the end of a page)")
