"""Operator commands: `crosslogic admin token`, `tenants …`, `keys …`, `audit` (via the admin HTTP API).

Every HTTP command takes `--url` (or CROSSLOGIC_URL, default http://127.0.0.1:8000), `--token` (or
CROSSLOGIC_ADMIN_TOKEN; without one, a 5-minute token is minted from the local admin secret) and
`--json` for machine-readable output instead of a table.
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

from crosslogic.admin.jwt_auth import AdminScope
from crosslogic.admin.local_secret import DEFAULT_TOKEN_TTL_S, mint_admin_token, resolve_admin_secret
from crosslogic.errors import ConfigError
from crosslogic.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8000"
ADMIN_PATH = "/admin/v1"
CLI_TOKEN_TTL_S = 300

TENANT_COLUMNS = ("id", "name", "status", "rpm", "tpm", "max_concurrency", "stripe_customer_id", "created_at")
KEY_COLUMNS = ("id", "name", "prefix", "scopes", "expires_at", "revoked_at", "last_used_at")
AUDIT_COLUMNS = ("id", "at", "actor", "action", "target_type", "target_id", "result")


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


def _show(args: argparse.Namespace, result: Any, columns: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rows = result["data"] if isinstance(result, dict) and result.get("object") == "list" else [result]
    print(format_table(rows, columns))
    if isinstance(result, dict) and result.get("has_more"):
        print(f"(more: --after {result['last_id']})")


# --- commands --------------------------------------------------------------------------------


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "operator"


def _token_for(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get("CROSSLOGIC_ADMIN_TOKEN")
    if token:
        return str(token)
    secret = resolve_admin_secret(Settings.from_env(), create_local=False)
    return mint_admin_token(secret, subject=f"cli:{_whoami()}", ttl_s=CLI_TOKEN_TTL_S)


def _client(args: argparse.Namespace) -> AdminClient:
    url = args.url or os.environ.get("CROSSLOGIC_URL") or DEFAULT_URL
    return AdminClient(url, _token_for(args), transport=getattr(args, "transport", None))


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """Limit options that were given; the word `none` clears a limit (unlimited)."""
    body: dict[str, Any] = {}
    for name in ("rpm", "tpm", "max_concurrency", "stripe_customer_id"):
        value = getattr(args, name, None)
        if value is not None:
            body[name] = None if value == "none" else value
    return body


async def _run(
    args: argparse.Namespace,
    method: str,
    path: str,
    columns: Sequence[str],
    *,
    show: Callable[[argparse.Namespace, Any], None] | None = None,
    **kw: Any,
) -> int:
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
        _show(args, result, columns)
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    try:
        secret = resolve_admin_secret(Settings.from_env(), create_local=True)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(mint_admin_token(secret, subject=args.subject, scopes=[args.scope], ttl_s=args.ttl))
    return 0


async def _tenants_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, **_limits(args)}
    return await _run(args, "POST", "/tenants", TENANT_COLUMNS, body=body)


async def _tenants_list(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, "after": args.after, "status": args.status}
    return await _run(args, "GET", "/tenants", TENANT_COLUMNS, params=params)


async def _tenants_get(args: argparse.Namespace) -> int:
    return await _run(args, "GET", f"/tenants/{args.tenant_id}", TENANT_COLUMNS)


async def _tenants_update(args: argparse.Namespace) -> int:
    return await _run(args, "PATCH", f"/tenants/{args.tenant_id}", TENANT_COLUMNS, body=_limits(args))


async def _tenants_suspend(args: argparse.Namespace) -> int:
    return await _run(args, "POST", f"/tenants/{args.tenant_id}/suspend", TENANT_COLUMNS)


async def _tenants_reactivate(args: argparse.Namespace) -> int:
    return await _run(args, "POST", f"/tenants/{args.tenant_id}/reactivate", TENANT_COLUMNS)


def _show_created_key(args: argparse.Namespace, created: Any) -> None:
    if args.json:
        print(json.dumps(created, indent=2))
        return
    print(format_table([created["key"]], KEY_COLUMNS))
    print(f"\nsecret: {created['secret']}\n(shown once; it cannot be retrieved again)")


async def _keys_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "scopes": args.model or [], "expires_at": args.expires_at, **_limits(args)}
    path = f"/tenants/{args.tenant_id}/keys"
    return await _run(args, "POST", path, KEY_COLUMNS, show=_show_created_key, body=body)


async def _keys_list(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, "after": args.after, "include_revoked": str(not args.active).lower()}
    return await _run(args, "GET", f"/tenants/{args.tenant_id}/keys", KEY_COLUMNS, params=params)


async def _keys_revoke(args: argparse.Namespace) -> int:
    return await _run(args, "POST", f"/keys/{args.key_id}/revoke", KEY_COLUMNS)


async def _audit(args: argparse.Namespace) -> int:
    names = ("actor", "action", "target_type", "target_id", "result", "since", "until", "limit", "after")
    return await _run(args, "GET", "/audit", AUDIT_COLUMNS, params={n: getattr(args, n) for n in names})


# --- argument parsing ------------------------------------------------------------------------


def _http_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"CrossLogic base URL (env CROSSLOGIC_URL, default {DEFAULT_URL})")
    common.add_argument("--token", help="admin JWT (env CROSSLOGIC_ADMIN_TOKEN; default: mint a local one)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return common


def _limit_options(parser: argparse.ArgumentParser, *, stripe: bool) -> None:
    for name in ("rpm", "tpm", "max-concurrency"):
        parser.add_argument(
            f"--{name}", type=_limit_value, help="a positive integer, or 'none' for unlimited"
        )
    if stripe:
        parser.add_argument("--stripe-customer-id", help="Stripe customer id (cus_…), or 'none'")


def _limit_value(raw: str) -> int | str:
    if raw.lower() == "none":
        return "none"
    try:
        return int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {raw!r}") from None


def _page_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=20, help="page size (1-100)")
    parser.add_argument("--after", help="continue after this id (printed at the end of a page)")


def _group(subparsers: Any, name: str, help_text: str) -> Any:
    parser = subparsers.add_parser(name, help=help_text)
    parser.set_defaults(handler=lambda _args: parser.print_help() or 2)
    return parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def register(subparsers: Any) -> None:
    common = _http_options()

    admin = _group(subparsers, "admin", "admin plane helpers (token)")
    token = admin.add_parser("token", help="print a short-lived admin JWT for the local stack")
    token.add_argument("--subject", default=f"local:{_whoami()}", help="the JWT subject (audit actor)")
    token.add_argument("--scope", choices=[s.value for s in AdminScope], default=AdminScope.WRITE.value)
    token.add_argument("--ttl", type=int, default=DEFAULT_TOKEN_TTL_S, help="lifetime in seconds")
    token.set_defaults(handler=_cmd_token)

    tenants = _group(subparsers, "tenants", "manage tenants")
    create = tenants.add_parser("create", parents=[common], help="create a tenant")
    create.add_argument("name")
    _limit_options(create, stripe=True)
    create.set_defaults(handler=_tenants_create)
    listing = tenants.add_parser("list", parents=[common], help="list tenants")
    _page_options(listing)
    listing.add_argument("--status", choices=["active", "suspended"])
    listing.set_defaults(handler=_tenants_list)
    for name, handler, help_text in (
        ("get", _tenants_get, "show one tenant"),
        ("suspend", _tenants_suspend, "suspend a tenant (its keys stop working within a second)"),
        ("reactivate", _tenants_reactivate, "reactivate a suspended tenant"),
    ):
        command = tenants.add_parser(name, parents=[common], help=help_text)
        command.add_argument("tenant_id")
        command.set_defaults(handler=handler)
    update = tenants.add_parser("update", parents=[common], help="change limits / Stripe customer id")
    update.add_argument("tenant_id")
    _limit_options(update, stripe=True)
    update.set_defaults(handler=_tenants_update)

    keys = _group(subparsers, "keys", "manage API keys")
    key_create = keys.add_parser("create", parents=[common], help="create an API key (secret shown once)")
    key_create.add_argument("tenant_id")
    key_create.add_argument("--name", required=True)
    key_create.add_argument(
        "--model", action="append", help="allow only this model (repeatable; default: all models)"
    )
    key_create.add_argument("--expires-at", help="ISO 8601 time, e.g. 2027-01-01T00:00:00Z")
    _limit_options(key_create, stripe=False)
    key_create.set_defaults(handler=_keys_create)
    key_list = keys.add_parser("list", parents=[common], help="list a tenant's keys (never secrets)")
    key_list.add_argument("tenant_id")
    key_list.add_argument("--active", action="store_true", help="hide revoked keys")
    _page_options(key_list)
    key_list.set_defaults(handler=_keys_list)
    revoke = keys.add_parser("revoke", parents=[common], help="revoke an API key")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_keys_revoke)

    audit = subparsers.add_parser("audit", parents=[common], help="query the admin audit log")
    for name in ("actor", "action", "target-type", "target-id", "since", "until"):
        audit.add_argument(f"--{name}")
    audit.add_argument("--result", choices=["success", "error", "denied"])
    _page_options(audit)
    audit.set_defaults(handler=_audit)
