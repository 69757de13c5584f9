"""One local Ray cluster per test session with the real stack deployed from serve_config.yaml.

The test variant of the config changes only what a test needs: a free HTTP port and two replicas of
the chat model (so routing can be observed), and two ingress replicas. Everything else — builder, engines, router — is the
production path. Every test here is marked `serve`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crosslogic.localstack.ray_cluster import LocalRayCluster, free_port, wait_ready
from tests.alert_receivers import ROUTING_KEY
from tests.otlp_receiver import OtlpReceiver
from tests.serve.alert_thread import AlertReceiversThread
from tests.serve.stripe_thread import StripeServerThread
from tests.tls_ca import TlsFiles, make_ca

REPO = Path(__file__).resolve().parents[2]
STRIPE_KEY = "sk_test_crosslogic_serve_tests"
METERS = ("crosslogic_input_tokens", "crosslogic_output_tokens")
CHAT_MODEL = "smollm2-135m"
EMBED_MODEL = "all-minilm-l6-v2"


@dataclass
class ServeStack:
    base_url: str
    cluster: LocalRayCluster
    config: dict[str, Any]
    admin_secret: str
    stripe: StripeServerThread
    webhook_secret: str
    api_key: str = ""
    tenant_id: str = ""
    # The CA the control plane trusts for regional gateways, and the client certificate it presents
    # to them (mTLS): a test region's gateway gets its server certificate from the same CA.
    tls: TlsFiles | None = None
    # Where the stack's alerts go (its `alerts:` config): a webhook receiver and strict PagerDuty.
    alerts: AlertReceiversThread | None = None
    # The strict OTLP/HTTP receiver the stack's traces go to (`tracing:` below).
    otlp: OtlpReceiver | None = None

    def admin_headers(self) -> dict[str, str]:
        from crosslogic.admin.local_secret import mint_admin_token

        return {"authorization": f"Bearer {mint_admin_token(self.admin_secret, subject='serve-tests')}"}

    def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return httpx.request(method, f"{self.base_url}/admin/v1{path}", json=json, headers=self.admin_headers(), timeout=30)

    def create_tenant_and_key(self, name: str, **key_fields: Any) -> tuple[str, str, str]:
        """(tenant id, key id, secret) created through the admin API of the running ingress."""
        tenant = self.admin("POST", "/tenants", {"name": name})
        assert tenant.status_code == 201, tenant.text
        tenant_id = tenant.json()["id"]
        created = self.admin("POST", f"/tenants/{tenant_id}/keys", {"name": f"{name}-key", **key_fields})
        assert created.status_code == 201, created.text
        return tenant_id, created.json()["key"]["id"], created.json()["secret"]

    @property
    def openai_base(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    def ready(self) -> dict[str, Any]:
        return httpx.get(f"{self.base_url}/ready", timeout=10).json()

    def engine_replicas(self, model: str = CHAT_MODEL) -> dict[str, dict[str, Any]]:
        deps = self.ready()["dependencies"]
        return deps[f"engine:{model}"]["data"].get("replicas", {})


def process_title(proc: Any) -> str:
    """What a process calls itself (Ray and vLLM retitle theirs: `ray::ServeReplica:…`, `VLLM::Worker`);
    "" for one that ended meanwhile."""
    import psutil

    try:
        return str((proc.cmdline() or [proc.name()])[0])
    except psutil.Error:
        return ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/serve/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.serve)


def _test_config(http_port: int) -> dict[str, Any]:
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"]["port"] = http_port
    app = config["applications"][0]
    # Two ingress replicas: key revocation, routing counts and limits must hold across replicas.
    app["args"]["ingress"]["num_replicas"] = 2
    # A started stream silent this long ends with engine_stalled (test_routing_and_cancellation
    # freezes an engine): shorter than the default 60 s, still far above any gap between tokens
    # seen under the suite's load.
    app["args"]["ingress"]["engine_stream_idle_timeout_s"] = 30
    # Short windows and leases so exactness and expiry are observable within a test; a namespace of
    # our own on the shared Redis.
    app["args"]["limits"] = {
        "window_s": 10.0,
        "lease_ttl_s": 6.0,
        # Three engines, two ingress replicas and the test client share 2 cores: under the leak
        # test's load an ingress's event loop lags past the 0.25 s default, which the limiter
        # (rightly) takes for a Redis outage and fails open. Outages have their own tests
        # (tests/unit/ratelimit/test_ratelimit_redis_outage.py); here Redis is up.
        "redis_timeout_s": 1.0,
        # Off by default (crosslogic/config.py); on here so both admission paths run through the
        # suite: the overlapped one in every limit test, the waiting one for every first request
        # of a key and near every limit.
        "overlap_admission": True,
        "namespace": f"crosslogic:test:{os.getpid()}:{time.time_ns()}",
    }
    # Every test client connects from 127.0.0.1: failed-auth budgets per address would let one test's
    # bad keys throttle the next test's. The suite plays a front proxy instead: a test that wants an
    # address of its own sends it in X-Forwarded-For (tests/serve/test_auth_throttle.py); requests
    # without one stay under the loopback address (crosslogic/auth/client_address.py).
    app["args"]["auth_throttle"] = {"client_address": {"forwarded_for_hops": 1}}
    for model in app["args"]["models"]:
        if model["served_name"] == CHAT_MODEL:
            model["num_replicas"] = 2
    return config


# Package scope: the stack stops when the last test of tests/serve is done, not at the session's end.
# Its batch runners poll the session database: alive during the unit tests, they claimed the batches
# those tests create for their own runners (a unit test's batch failed on the stack's engines), and
# its engines and Ray took CPU from every unit test after them.
@pytest.fixture(scope="package")
def serve_stack(database_url: str) -> Iterator[ServeStack]:
    import secrets

    tmp = Path(tempfile.mkdtemp(prefix="clt-"))
    admin_secret = secrets.token_urlsafe(48)
    webhook_secret = "whsec_" + secrets.token_hex(16)
    stripe = StripeServerThread(STRIPE_KEY, set(METERS))
    stripe_url = stripe.start()
    alerts = AlertReceiversThread()
    alerts.start()
    otlp = OtlpReceiver()
    otlp.start()
    # The Ray cluster (and so every replica and the billing actor) inherits these from the
    # environment of `ray start`: the production configuration, with Stripe's cloud replaced by the
    # strict local server.
    env = {
        "DATABASE_URL": database_url,
        "CROSSLOGIC_ADMIN_JWT_SECRET": admin_secret,
        "CROSSLOGIC_REGION_MASTER_SECRET": secrets.token_hex(32),
        "BILLING_ENABLED": "true",
        "STRIPE_API_KEY": STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": webhook_secret,
        "STRIPE_METER_INPUT_TOKENS": METERS[0],
        "STRIPE_METER_OUTPUT_TOKENS": METERS[1],
        "STRIPE_API_BASE": stripe_url,
        "CROSSLOGIC_PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    http_port = free_port()
    cluster = LocalRayCluster(
        gcs_port=free_port(), dashboard_port=free_port(), num_cpus=8, temp_dir=str(tmp / "ray")
    )
    config = _test_config(http_port)
    tls = make_ca(tmp / "tls")
    config["applications"][0]["args"]["regions"] = {
        # Regional gateways are dialled trusting the test CA, presenting its client certificate.
        "tls": {"ca_bundle": tls.ca_cert, "client_cert": tls.client_cert, "client_key": tls.client_key},
    }
    # Requests whose client sent a sampled traceparent are traced, to this session's receiver; ratio 0
    # leaves every other request untraced (tests/serve/test_tracing_end_to_end.py).
    config["applications"][0]["args"]["tracing"] = {
        "enabled": True, "endpoint": otlp.url, "sample_ratio": 0.0, "batch_delay_s": 0.5,
    }
    # Every alert of the session reaches the test's receivers; readiness is watched every 2 s and a
    # condition pages once it held 2 s (tests/serve/test_alerts_end_to_end.py breaks a dependency).
    config["applications"][0]["args"]["alerts"] = {
        "webhook": {"url": alerts.webhook_url},
        "pagerduty": {"events_url": alerts.pagerduty_url},
        "readiness": {"interval_s": 2.0, "alert_after_s": 2.0, "startup_grace_s": 0.0},
    }
    config_path = tmp / "serve_config.test.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cluster.start()
    try:
        cluster.deploy(config_path)
        base_url = f"http://127.0.0.1:{http_port}"
        started = time.monotonic()
        wait_ready(base_url, timeout_s=600, progress=print)
        # As `crosslogic local up` does: the suite then also covers engines replaced afterwards
        # (they must widen the mask the raylet hands them, see cpu_placement.allow_all_cores).
        print(cluster.keep_off_engine_cores())
        print(f"stack ready in {time.monotonic() - started:.0f}s")
        stack = ServeStack(
            base_url=base_url, cluster=cluster, config=config, admin_secret=admin_secret,
            stripe=stripe, webhook_secret=webhook_secret, tls=tls, alerts=alerts,
        )
        stack.otlp = otlp
        stack.tenant_id, _, stack.api_key = stack.create_tenant_and_key("serve-tests")
        yield stack
    finally:
        cluster.stop()
        stripe.stop()
        alerts.stop()
        otlp.stop()
        _print_serve_warnings(tmp / "ray")
        if os.environ.get("CROSSLOGIC_KEEP_TEST_LOGS") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _print_serve_warnings(ray_tmp: Path, limit: int = 40) -> None:
    """What the stack complained about during the session, so a CI log shows it (the logs go)."""
    lines: list[str] = []
    for log in sorted(ray_tmp.glob("session_2*/logs/serve/*.log")):  # not session_latest again
        with contextlib.suppress(OSError):
            lines += [f"{log.name}: {line.rstrip()}" for line in log.read_text(errors="replace").splitlines()
                      if line.startswith(("WARNING", "ERROR")) and "to initialize" not in line]
    print(f"\nserve logs: {len(lines)} warning/error lines" + ("; the first:" if lines else ""))
    for line in lines[:limit]:
        print("  " + line[:300])


@pytest.fixture(scope="package")
def ray_driver(serve_stack: ServeStack) -> Iterator[Any]:
    """A Ray driver connected to the test cluster, for killing actors and reading state."""
    import ray

    ray.init(address=serve_stack.cluster.address, namespace="crosslogic", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def chat_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from crosslogic.devmodels.prepare import resolve_model_source
    from crosslogic.settings import Settings

    path = resolve_model_source(CHAT_MODEL, Settings.from_env())
    return AutoTokenizer.from_pretrained(path)
