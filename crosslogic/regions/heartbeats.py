"""The control plane's check of a regional agent's heartbeat, from raw request to accepted Heartbeat.

Order matters: nothing about the body is believed before the signature is (the signature covers the
exact bytes), and only a verified request may spend a nonce (else anyone could burn a region's
nonces). Failed authentication is throttled per source address (`crosslogic.auth.throttle`: 429
too_many_failed_auth once its budget is spent, before any database lookup). Every refusal is audited
through the aggregated denied-audit machinery (`crosslogic.admin.denied_audit`): a flood of forged
heartbeats costs a few rows per source, reason and minute, never one row each. A refusal tells the
caller its reason (a string code) and nothing more: which header, which secret generation or which
byte failed stays on our side.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import asyncpg
from pydantic import ValidationError

from crosslogic.admin.denied_audit import DeniedAttempts
from crosslogic.api.errors import validation_error
from crosslogic.audit.log import AuditContext
from crosslogic.auth.throttle import FailedAuthThrottle
from crosslogic.errors import (
    AuthenticationError,
    ConflictError,
    CrossLogicError,
    InvalidRequestError,
    RateLimitError,
)
from crosslogic.regions import registry
from crosslogic.regions.config import MASTER_SECRET_ENV, RegionsConfig
from crosslogic.regions.protocol import Heartbeat, VersionSet
from crosslogic.regions.registry import PgNonceStore
from crosslogic.regions.signing import (
    REGION_HEADER,
    NonceStore,
    SignatureRefused,
    derive_region_secret,
    parse_headers,
    verify,
)
from crosslogic.regions.versions import local_versions, mismatches

log = logging.getLogger("crosslogic.regions.heartbeats")

AUDIT_ACTION = "region.heartbeat"
AUDIT_ACTOR = "region-agent"

# The string code a refused agent sees, per reason (401 unless said otherwise).
REFUSAL_CODES: dict[str, str] = {
    "missing_signature": "missing_region_signature",
    "malformed_signature": "malformed_region_signature",
    "bad_signature": "invalid_region_signature",
    "clock_skew": "region_clock_skew",
    "replayed_nonce": "replayed_nonce",
    "unknown_region": "unknown_region",
    "region_disabled": "region_disabled",
    "version_mismatch": "region_version_mismatch",
}


@dataclass(frozen=True)
class AcceptedHeartbeat:
    heartbeat: Heartbeat
    # The registry's, carried to the live view with every heartbeat (so a drain survives restarts).
    operator_drained: bool
    # Which secret the region holds now: the ingress signs calls to its gateway with the same one.
    secret_generation: int


def _refusal(exc: SignatureRefused) -> AuthenticationError:
    return AuthenticationError(exc.message, code=REFUSAL_CODES.get(exc.reason, "invalid_region_signature"))


def _describe(versions: VersionSet) -> str:
    return ", ".join(f"{name} {value}" for name, value in versions.model_dump().items())


class HeartbeatVerifier:
    """One per ingress replica; they share PostgreSQL (registry and nonces), so a heartbeat replayed
    to another replica is refused as well."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        master_secret: bytes | None,
        *,
        config: RegionsConfig | None = None,
        denied: DeniedAttempts | None = None,
        nonces: NonceStore | None = None,
        versions: VersionSet | None = None,
        clock: Callable[[], float] = time.time,
        throttle: FailedAuthThrottle | None = None,
    ) -> None:
        self._pool = pool
        self._throttle = throttle
        self._master = master_secret
        self._skew_s = (config or RegionsConfig()).clock_skew_s
        self._denied = denied or DeniedAttempts(pool, target_type="region", event="region_auth_failed")
        self._nonces = nonces or PgNonceStore(pool, self._skew_s)
        # The control plane's versions are read once: they cannot change under a running process.
        self._versions = versions or local_versions()
        self._clock = clock
        self._warned_no_master = False

    @property
    def versions(self) -> VersionSet:
        return self._versions

    async def verify(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        source: str,
        request_id: str | None = None,
    ) -> AcceptedHeartbeat:
        """The accepted heartbeat, or a CrossLogicError to answer (401, 400 or 409), already audited."""
        claimed = str(headers.get(REGION_HEADER) or "")[:64] or None
        if self._throttle is not None:
            try:
                self._throttle.reserve(source)  # one failure spent ahead; refunded unless it fails
            except RateLimitError:
                await self._audit("throttled", claimed, source, request_id)
                raise
        authenticated = False
        try:
            accepted = await self._verify(method, path, headers, body)
            authenticated = True
            return accepted
        except SignatureRefused as exc:
            authenticated = exc.reason == "version_mismatch"  # signed by the region: not a guess
            await self._audit(exc.reason, claimed, source, request_id)
            if authenticated:
                raise ConflictError(exc.message, code=REFUSAL_CODES["version_mismatch"]) from None
            raise _refusal(exc) from None
        except InvalidRequestError as exc:  # only a verified request gets as far as its body
            authenticated = True
            await self._audit(exc.code or "invalid_heartbeat", claimed, source, request_id)
            raise
        except CrossLogicError:  # the database unavailable (503): nobody failed to authenticate
            authenticated = True
            raise
        finally:
            if authenticated and self._throttle is not None:
                self._throttle.refund(source)

    async def _verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> AcceptedHeartbeat:
        signed = parse_headers(headers)
        region = await registry.find_region(self._pool, signed.region) if self._master else None
        if self._master is None and not self._warned_no_master:
            self._warned_no_master = True
            log.warning("a region heartbeat was refused: %s is not set on the control plane", MASTER_SECRET_ENV)
        if region is None:
            raise SignatureRefused("unknown_region", "unknown region")
        assert self._master is not None
        secret = derive_region_secret(self._master, region.name, region.secret_generation)
        verify(secret, signed, purpose="agent", method=method, path=path, body=body,
               now=self._clock(), skew_s=self._skew_s)
        # After the signature: only the region's own agent learns that it was disabled.
        if region.disabled:
            raise SignatureRefused("region_disabled", f"region {region.name!r} is disabled")
        if not await self._nonces.claim(region.name, signed.nonce, signed.timestamp):
            raise SignatureRefused("replayed_nonce", "this nonce was already used")
        try:
            heartbeat = Heartbeat.model_validate_json(body)
        except ValidationError as exc:
            error = validation_error(exc.errors())
            raise InvalidRequestError(f"invalid heartbeat: {error.message}", param=error.param,
                                      code="invalid_heartbeat") from None
        if heartbeat.region != region.name:
            raise InvalidRequestError(
                f"the heartbeat names region {heartbeat.region!r} but is signed for {region.name!r}",
                param="region", code="region_mismatch",
            )
        differences = mismatches(self._versions, heartbeat.versions)
        if differences:
            raise SignatureRefused(
                "version_mismatch",
                f"region {region.name!r} runs other versions than the control plane ({'; '.join(differences)}). "
                f"Control plane: {_describe(self._versions)}; region: {_describe(heartbeat.versions)}",
            )
        await registry.record_heartbeat(
            self._pool, region.name, gateway_url=heartbeat.gateway_url, versions=heartbeat.versions,
            agent_id=heartbeat.agent_id,
        )
        return AcceptedHeartbeat(
            heartbeat=heartbeat, operator_drained=region.operator_drained,
            secret_generation=region.secret_generation,
        )

    async def _audit(self, reason: str, claimed: str | None, source: str, request_id: str | None) -> None:
        ctx = AuditContext(actor=AUDIT_ACTOR, request_id=request_id, client_addr=source)
        try:
            await self._denied.record(ctx, source=source, action=AUDIT_ACTION, target_id=claimed, reason=reason)
        except CrossLogicError as exc:  # the audit is best effort; the refusal stands
            log.error("could not audit a refused heartbeat (%s): %r", reason, exc)

    async def close(self) -> None:
        await self._denied.close()

