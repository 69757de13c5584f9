"""Cost of admin JWT verification (`AdminJWTVerifier.verify`) per algorithm, JWKS keys cached.

Admin calls are rare, so this is a sanity figure rather than a hot path: it shows the signature
check dominates (RSA/ECDSA verification) and the JWKS is not fetched per request.

    .venv/bin/python benchmarks/admin_jwt_bench.py [-n N]

Prints a summary and writes benchmarks/results/admin_jwt.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit" / "admin"))
from jwks_server import ec_key, public_jwk, rsa_key, serve_jwks

from crosslogic.admin.jwt_auth import AdminAuthConfig, AdminJWTVerifier
from crosslogic.admin.local_secret import mint_admin_token

SECRET = "bench-" + "Zr8Kq2Lm5Np7Tx9Vb3Wc6Yd1Fg4Hj0Ks"
AUDIENCE = "crosslogic-admin-bench"


async def timed(verifier: AdminJWTVerifier, token: str, n: int) -> dict[str, float]:
    await verifier.verify(token)  # warm: JWKS fetched once
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await verifier.verify(token)
        samples.append((time.perf_counter() - started) * 1e3)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 4),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 4),
        "mean_ms": round(statistics.fmean(samples), 4),
    }


async def run(n: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    hs = AdminJWTVerifier(AdminAuthConfig(hs256_secret=SECRET))
    results["HS256"] = await timed(hs, mint_admin_token(SECRET, ttl_s=600), n)
    with serve_jwks() as idp:
        rsa, ec = rsa_key(), ec_key()
        idp.publish(public_jwk(rsa, "r", "RS256"), public_jwk(ec, "e", "ES256"))
        oidc = AdminJWTVerifier(AdminAuthConfig(oidc_issuer=idp.issuer, oidc_audience=AUDIENCE))
        claims = {"sub": "bench", "iss": idp.issuer, "aud": AUDIENCE, "iat": int(time.time()),
                  "exp": int(time.time()) + 600,
                  "scope": "admin:read"}
        try:
            results["RS256"] = await timed(oidc, jwt.encode(claims, rsa, "RS256", headers={"kid": "r"}), n)
            results["ES256"] = await timed(oidc, jwt.encode(claims, ec, "ES256", headers={"kid": "e"}), n)
        finally:
            await oidc.aclose()
        results["jwks_fetches"] = idp.fetches
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    results = asyncio.run(run(args.n))
    report = {"iterations": args.n, "python": platform.python_version(), "machine": platform.machine(),
              "verify": results}
    for alg in ("HS256", "RS256", "ES256"):
        r = results[alg]
        print(f"{alg}: p50 {r['p50_ms']:.4f} ms  p99 {r['p99_ms']:.4f} ms")
    print(f"JWKS fetches: {results['jwks_fetches']}")
    out = Path(__file__).parent / "results" / "admin_jwt.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
