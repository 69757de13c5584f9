"""Operator commands over the admin HTTP API: `crosslogic admin token|models|regions`, `tenants …`,
`keys …`, `audit`. Readable tables by default, `--json` for scripts (options: `crosslogic.cli.admin_client`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from crosslogic.admin.jwt_auth import AdminScope
from crosslogic.admin.local_secret import DEFAULT_TOKEN_TTL_S, mint_admin_token, resolve_admin_secret
from crosslogic.cli.admin_client import (
    format_table,
    http_options,
    page_options,
    run_request,
    whoami,
)
from crosslogic.errors import ConfigError
from crosslogic.settings import Settings

TENANT_COLUMNS = (
    "id", "name", "status", "rpm", "tpm", "max_concurrency", "stripe_customer_id", "created_at"
)
KEY_COLUMNS = ("id", "name", "prefix", "scopes", "expires_at", "revoked_at", "last_used_at")
AUDIT_COLUMNS = ("id", "at", "actor", "action", "target_type", "target_id", "result", "attempts")
REGION_COLUMNS = (
    "name", "state", "reason", "last_heartbeat_age_s", "replicas", "models", "secret_generation", "gateway_url",
)
MODEL_COLUMNS = (
    "id", "served_name", "dtype", "parameter_count", "max_model_len", "tensor_parallel_size",
    "per_gpu_gib", "fits_on",
)


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """Limit options that were given; the word `none` clears a limit (unlimited)."""
    body: dict[str, Any] = {}
    for name in ("rpm", "tpm", "max_concurrency", "stripe_customer_id"):
        value = getattr(args, name, None)
        if value is not None:
            body[name] = None if value == "none" else value
    return body


def _cmd_token(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if not 0 < args.ttl <= settings.admin_jwt_max_lifetime_s:
        print(
            f"error: --ttl must be between 1 and {settings.admin_jwt_max_lifetime_s:g} seconds "
            "(the verifier's bound, CROSSLOGIC_ADMIN_JWT_MAX_LIFETIME_S)",
            file=sys.stderr,
        )
        return 2
    try:
        secret = resolve_admin_secret(settings, create_local=True)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    token = mint_admin_token(
        secret,
        subject=args.subject,
        scopes=[args.scope],
        ttl_s=args.ttl,
        max_lifetime_s=settings.admin_jwt_max_lifetime_s,
    )
    print(token)
    return 0


async def _tenants_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, **_limits(args)}
    return await run_request(args, "POST", "/tenants", TENANT_COLUMNS, body=body)


async def _tenants_list(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, "after": args.after, "status": args.status}
    return await run_request(args, "GET", "/tenants", TENANT_COLUMNS, params=params)


async def _tenants_get(args: argparse.Namespace) -> int:
    return await run_request(args, "GET", f"/tenants/{args.tenant_id}", TENANT_COLUMNS)


async def _tenants_update(args: argparse.Namespace) -> int:
    return await run_request(args, "PATCH", f"/tenants/{args.tenant_id}", TENANT_COLUMNS, body=_limits(args))


async def _tenants_suspend(args: argparse.Namespace) -> int:
    return await run_request(args, "POST", f"/tenants/{args.tenant_id}/suspend", TENANT_COLUMNS)


async def _tenants_reactivate(args: argparse.Namespace) -> int:
    return await run_request(args, "POST", f"/tenants/{args.tenant_id}/reactivate", TENANT_COLUMNS)


def _show_created_key(args: argparse.Namespace, created: Any) -> None:
    if args.json:
        print(json.dumps(created, indent=2))
        return
    print(format_table([created["key"]], KEY_COLUMNS))
    print(f"\nsecret: {created['secret']}\n(shown once; it cannot be retrieved again)")


async def _keys_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "scopes": args.model or [], "expires_at": args.expires_at, **_limits(args)}
    path = f"/tenants/{args.tenant_id}/keys"
    return await run_request(args, "POST", path, KEY_COLUMNS, show=_show_created_key, body=body)


async def _keys_list(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, "after": args.after, "include_revoked": str(not args.active).lower()}
    return await run_request(args, "GET", f"/tenants/{args.tenant_id}/keys", KEY_COLUMNS, params=params)


async def _keys_revoke(args: argparse.Namespace) -> int:
    return await run_request(args, "POST", f"/keys/{args.key_id}/revoke", KEY_COLUMNS)


async def _audit(args: argparse.Namespace) -> int:
    names = ("actor", "action", "target_type", "target_id", "result", "since", "until", "limit", "after")
    return await run_request(args, "GET", "/audit", AUDIT_COLUMNS, params={n: getattr(args, n) for n in names})


def _show_models(args: argparse.Namespace, result: Any) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
        return
    models = result["data"] if result.get("object") == "list" else [result]
    # The VRAM figures live in a nested object; lift them into columns.
    rows = [{**m, "per_gpu_gib": m["vram"]["per_gpu_gib"], "fits_on": m["vram"]["fits_on"]} for m in models]
    print(format_table(rows, MODEL_COLUMNS))


async def _models_list(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, "after": args.after, "max_num_seqs": args.max_num_seqs}
    return await run_request(args, "GET", "/models", MODEL_COLUMNS, show=_show_models, params=params)


async def _models_create(args: argparse.Namespace) -> int:
    names = (
        "served_name", "source", "task", "parameter_count", "dtype", "max_model_len",
        "tensor_parallel_size", "num_layers", "num_kv_heads", "head_dim", "price_input_per_mtok",
        "price_output_per_mtok", "accelerator", "max_num_seqs",
    )
    body = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return await run_request(args, "POST", "/models", MODEL_COLUMNS, show=_show_models, body=body)


async def _models_delete(args: argparse.Namespace) -> int:
    return await run_request(args, "DELETE", f"/models/{args.model_id}", ("id", "object", "deleted"))


def _register_models(admin: Any, common: argparse.ArgumentParser) -> None:
    models = admin.add_parser("models", help="the model registry (templates with VRAM estimates)")
    commands = models.add_subparsers(dest="admin_models_command", metavar="SUBCOMMAND")
    models.set_defaults(handler=lambda _args: models.print_help() or 2)
    listing = commands.add_parser("list", parents=[common], help="list templates and their VRAM needs")
    page_options(listing)
    listing.add_argument("--max-num-seqs", type=int, help="sequence budget for the KV cache (default 1)")
    listing.set_defaults(handler=_models_list)
    create = commands.add_parser("create", parents=[common], help="register a template")
    create.add_argument("served_name")
    create.add_argument("--source", required=True, help="Hugging Face model id or path")
    create.add_argument("--task", choices=["generate", "embed"])
    create.add_argument("--parameter-count", type=int, required=True)
    create.add_argument("--dtype", required=True, help="float32, float16, bfloat16, fp8, int8 or int4")
    create.add_argument("--max-model-len", type=int, required=True)
    for name in ("tensor-parallel-size", "num-layers", "num-kv-heads", "head-dim", "max-num-seqs"):
        create.add_argument(f"--{name}", type=int)
    create.add_argument("--price-input-per-mtok", help="USD per million input tokens")
    create.add_argument("--price-output-per-mtok", help="USD per million output tokens")
    create.add_argument("--accelerator", help="refuse unless it fits, e.g. L4, A100-80GB, H100-80GB")
    create.set_defaults(handler=_models_create)
    delete = commands.add_parser("delete", parents=[common], help="delete a template")
    delete.add_argument("model_id")
    delete.set_defaults(handler=_models_delete)


def _show_regions(args: argparse.Namespace, result: Any) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
        return
    created = "secret" in result
    regions = result["data"] if result.get("object") == "list" else [result["region"] if created else result]
    rows = [{**r, "replicas": len(r["replicas"]), "reason": r["reason"] or None} for r in regions]
    print(format_table(rows, REGION_COLUMNS))
    if created:
        print(f"\nsecret: {result['secret']}\n(shown once: give it to the region as CROSSLOGIC_REGION_SECRET)")


async def _regions_create(args: argparse.Namespace) -> int:
    return await run_request(args, "POST", "/regions", REGION_COLUMNS, show=_show_regions, body={"name": args.name})


async def _regions_list(args: argparse.Namespace) -> int:
    return await run_request(args, "GET", "/regions", REGION_COLUMNS, show=_show_regions)


def _region_call(method: str, suffix: str = "") -> Any:
    async def handler(args: argparse.Namespace) -> int:
        path = f"/regions/{args.name}{suffix}"
        return await run_request(args, method, path, REGION_COLUMNS, show=_show_regions)

    return handler


def _register_regions(admin: Any, common: argparse.ArgumentParser) -> None:
    regions = admin.add_parser("regions", help="regional clusters: register, drain, rotate secrets")
    commands = regions.add_subparsers(dest="admin_regions_command", metavar="SUBCOMMAND")
    regions.set_defaults(handler=lambda _args: regions.print_help() or 2)
    create = commands.add_parser("create", parents=[common], help="register a region (its secret is shown once)")
    create.add_argument("name", help="lower-case letters, digits and '-', e.g. eu-west")
    create.set_defaults(handler=_regions_create)
    commands.add_parser("list", parents=[common], help="list regions and their live state").set_defaults(
        handler=_regions_list
    )
    for name, method, suffix, help_text in (
        ("show", "GET", "", "show one region"),
        ("drain", "POST", "/drain", "send no new requests to a region (until undrain)"),
        ("undrain", "POST", "/undrain", "undo a drain"),
        ("rotate-secret", "POST", "/rotate-secret", "new secret (shown once); the old one stops working"),
        ("delete", "DELETE", "", "disable a region: its heartbeats are refused"),
    ):
        command = commands.add_parser(name, parents=[common], help=help_text)
        command.add_argument("name")
        command.set_defaults(handler=_region_call(method, suffix))


# --- argument parsing ------------------------------------------------------------------------


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


def _group(subparsers: Any, name: str, help_text: str) -> Any:
    parser = subparsers.add_parser(name, help=help_text)
    parser.set_defaults(handler=lambda _args: parser.print_help() or 2)
    return parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def register(subparsers: Any) -> None:
    common = http_options()

    admin = _group(subparsers, "admin", "admin plane: tokens and the model registry")
    token = admin.add_parser("token", help="print a short-lived admin JWT for the local stack")
    token.add_argument("--subject", default=f"local:{whoami()}", help="the JWT subject (audit actor)")
    token.add_argument("--scope", choices=[s.value for s in AdminScope], default=AdminScope.WRITE.value)
    token.add_argument("--ttl", type=int, default=DEFAULT_TOKEN_TTL_S, help="lifetime in seconds")
    token.set_defaults(handler=_cmd_token)
    _register_models(admin, common)
    _register_regions(admin, common)

    tenants = _group(subparsers, "tenants", "manage tenants")
    create = tenants.add_parser("create", parents=[common], help="create a tenant")
    create.add_argument("name")
    _limit_options(create, stripe=True)
    create.set_defaults(handler=_tenants_create)
    listing = tenants.add_parser("list", parents=[common], help="list tenants")
    page_options(listing)
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
    page_options(key_list)
    key_list.set_defaults(handler=_keys_list)
    revoke = keys.add_parser("revoke", parents=[common], help="revoke an API key")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_keys_revoke)

    audit = subparsers.add_parser("audit", parents=[common], help="query the admin audit log")
    for name in ("actor", "action", "target-type", "target-id", "since", "until"):
        audit.add_argument(f"--{name}")
    audit.add_argument("--result", choices=["success", "error", "denied"])
    page_options(audit)
    audit.set_defaults(handler=_audit)
