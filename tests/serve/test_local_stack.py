"""`make run`'s command end to end: `crosslogic local up --no-wait`, then `crosslogic local down`.

This is the laptop path the other serve tests do not take: no DATABASE_URL (embedded PostgreSQL in
CROSSLOGIC_HOME), no REDIS_URL (rate limits in the in-cluster actor), billing off, the dev tenant and
key created on first start.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml

from crosslogic.devmodels.prepare import prepare_dev_model
from crosslogic.localstack.listeners import listeners, table
from crosslogic.localstack.ray_cluster import cluster_processes, free_port
from crosslogic.settings import Settings
from tests.serve.conftest import CHAT_MODEL, REPO, process_title

CLI = str(Path(sys.executable).parent / "crosslogic")
# The serve_stack fixture exports these for its own cluster; a laptop has none of them.
_NOT_ON_A_LAPTOP = ("DATABASE_URL", "REDIS_URL", "BILLING_ENABLED", "CROSSLOGIC_ADMIN_JWT_SECRET", "STRIPE_API_BASE")


@pytest.fixture(scope="module")
def local_home() -> Iterator[tuple[Path, dict[str, str], Path]]:
    home = Path(tempfile.mkdtemp(prefix="cl-home-"))
    # Reuse the converted model: this test is about the stack, not the conversion.
    shared = Settings.from_env()
    prepare_dev_model("smollm2-135m", shared)
    (home / "models").symlink_to(shared.models_dir, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in _NOT_ON_A_LAPTOP and not k.startswith("STRIPE_")}
    env["CROSSLOGIC_HOME"] = str(home)
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"]["port"] = free_port()
    app = config["applications"][0]
    app["args"]["models"] = [m for m in app["args"]["models"] if m["served_name"] == CHAT_MODEL]
    config_path = home / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    try:
        yield home, env, config_path
    finally:
        subprocess.run([CLI, "local", "down"], env=env, capture_output=True, timeout=300)
        if os.environ.get("CROSSLOGIC_KEEP_TEST_LOGS") != "1":  # Ray's logs are under the home
            shutil.rmtree(home, ignore_errors=True)


def _limited_key_is_exact(base: str, home: Path) -> None:
    """A key with rpm=2 through the local stack's limiter (the actor, over its stream): 2 answers, then 429."""
    from crosslogic.admin.local_secret import load_or_create_local_secret, mint_admin_token

    admin = {"authorization": f"Bearer {mint_admin_token(load_or_create_local_secret(home), subject='local-stack-test')}"}
    tenant = httpx.post(f"{base}/admin/v1/tenants", json={"name": "local-limited"}, headers=admin, timeout=30)
    assert tenant.status_code == 201, tenant.text
    key = httpx.post(f"{base}/admin/v1/tenants/{tenant.json()['id']}/keys", json={"name": "rpm-2", "rpm": 2},
                     headers=admin, timeout=30)
    assert key.status_code == 201, key.text
    headers = {"authorization": f"Bearer {key.json()['secret']}"}
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    statuses = [httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60).status_code
                for _ in range(3)]
    assert statuses == [200, 200, 429]


def _listens_on_loopback_only(up_output: str, cluster_id: str, pgdata: Path) -> None:
    """`make run`'s promise: every socket of its processes, the embedded PostgreSQL (no Ray
    process: found by its postmaster.pid) included, is on loopback; `local up` said so too."""
    assert "all on loopback" in up_output, up_output[-2000:]
    postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
    found = listeners([*cluster_processes(cluster_id), postmaster])
    print("\n" + table(found))
    assert any(item.pid == postmaster.pid for item in found)
    assert [item for item in found if not item.loopback] == [], table(found)


def test_local_up_then_down(local_home: tuple[Path, dict[str, str], Path]) -> None:
    home, env, config_path = local_home
    up = subprocess.run(
        [CLI, "local", "up", "--no-wait", "--config", str(config_path), "--ray-port", str(free_port()),
         "--dashboard-port", str(free_port()), "--timeout", "600"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    state = json.loads((home / "local-stack.json").read_text())
    base = state["base_url"]
    assert f"{base}/v1" in up.stdout and "Ray dashboard" in up.stdout and "curl" in up.stdout
    key_file = home / "dev-api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "admin-jwt-secret").stat().st_mode) == 0o600
    secret = key_file.read_text().strip()
    assert secret in up.stdout and secret.startswith("sk-cl-")
    assert (home / "pgdata").is_dir()  # embedded PostgreSQL, as on a laptop

    with openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0) as client:
        reply = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert reply.choices[0].message.content
    ready = httpx.get(f"{base}/ready", timeout=10).json()
    assert ready["ready"] and "billing" not in ready["dependencies"]
    # Without Redis the limits live in the in-cluster actor, reached over its stream (not Ray calls).
    assert ready["dependencies"]["ratelimit"] == {"ok": True, "detail": "in-cluster actor, over its stream", "data": {}}
    _limited_key_is_exact(base, home)
    _listens_on_loopback_only(up.stdout, state["cluster_id"], home / "pgdata")

    # Every process of the running stack, Ray's retitled agents included (they may have lost the tag).
    running = cluster_processes(state["cluster_id"])
    assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= {process_title(p) for p in running}
    down = subprocess.run([CLI, "local", "down"], env=env, capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/health", timeout=3)
    leftovers = [(p.pid, process_title(p)) for p in [*running, *cluster_processes(state["cluster_id"])] if _alive(p)]
    assert leftovers == [], "processes of the stopped stack are still running"


def _alive(proc: psutil.Process) -> bool:
    """Still running (a zombie waiting for its parent to reap it is not)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
