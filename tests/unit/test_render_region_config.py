"""What a region's node deploys: the Serve config rendered from the envs of cluster_configs/region-gpu.yaml,
built on the repository's region_config.yaml; plus the setup's version check and the control plane's
listener rewrite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crosslogic.cloud import check_versions
from crosslogic.cloud.render_region_config import TEMPLATE, RenderError, render
from crosslogic.cloud.render_serve_config import with_listener
from crosslogic.cloud.task_spec import REPO_ROOT, VERSION_ENVS, load_versions, load_yaml
from crosslogic.regions.app_config import RegionAppConfig

ENV = {
    "CROSSLOGIC_REGION": "eu-west",
    "CROSSLOGIC_CONTROL_PLANE_URL": "https://cp.example.com",
    "CROSSLOGIC_MODELS": "llama=meta-llama/Llama-3.1-8B-Instruct, Qwen/Qwen2.5-7B-Instruct",
    "CROSSLOGIC_GATEWAY_PORT": "8443",
    "CROSSLOGIC_GATEWAY_ADVERTISE_URL": "https://gw.eu-west.example.com:8443",
}


def template() -> dict:
    return yaml.safe_load(TEMPLATE.read_text())


def region_args(config: dict) -> dict:
    (app,) = config["applications"]
    return app["args"]


def test_renders_the_region_from_its_env() -> None:
    config = render(ENV, template())
    args = region_args(config)
    parsed = RegionAppConfig.model_validate(args)
    assert parsed.region == "eu-west"
    assert parsed.agent.control_plane_url == "https://cp.example.com"
    assert (parsed.gateway.host, parsed.gateway.port) == ("0.0.0.0", 8443)
    assert parsed.gateway.advertise_url == "https://gw.eu-west.example.com:8443"
    assert [(m.served_name, m.source) for m in parsed.models] == [
        ("llama", "meta-llama/Llama-3.1-8B-Instruct"),
        ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
    ]
    # GPU replicas: none of the template's CPU-engine settings carried over.
    assert all(m.ray_actor_options == {"num_gpus": 1} and m.env == {} for m in parsed.models)
    # The template's Serve options stay: no HTTP proxy, the region app, its agent interval.
    assert config["proxy_location"] == template()["proxy_location"] == "Disabled"
    assert config["applications"][0]["import_path"] == "deployments.region_app:build_region_app"
    assert parsed.agent.interval_s == region_args(template())["agent"]["interval_s"]


def test_gateway_port_matches_the_port_the_task_opens() -> None:
    task = load_yaml(REPO_ROOT / "cluster_configs" / "region-gpu.yaml")
    env = {**ENV, "CROSSLOGIC_GATEWAY_PORT": task["envs"]["CROSSLOGIC_GATEWAY_PORT"]}
    assert region_args(render(env, template()))["gateway"]["port"] == task["resources"]["ports"]


def test_tls_and_multi_gpu_replicas() -> None:
    env = {
        **ENV,
        "CROSSLOGIC_GPUS_PER_REPLICA": "2",
        "CROSSLOGIC_GATEWAY_TLS_CERTFILE": "/etc/crosslogic/gw.pem",
        "CROSSLOGIC_GATEWAY_TLS_KEYFILE": "/etc/crosslogic/gw.key",
        "CROSSLOGIC_GATEWAY_CLIENT_CA": "/etc/crosslogic/cp-ca.pem",
        "CROSSLOGIC_CONTROL_PLANE_CA_BUNDLE": "/etc/crosslogic/ca.pem",
    }
    parsed = RegionAppConfig.model_validate(region_args(render(env, template())))
    assert parsed.gateway.tls_certfile == "/etc/crosslogic/gw.pem"
    assert parsed.gateway.client_ca == "/etc/crosslogic/cp-ca.pem"
    assert parsed.agent.tls.ca_bundle == "/etc/crosslogic/ca.pem"
    model = parsed.models[0]
    assert model.ray_actor_options == {"num_gpus": 2}
    assert model.engine.engine_kwargs == {"tensor_parallel_size": 2}


def test_unset_advertise_url_is_left_out_not_empty() -> None:
    args = region_args(render({**ENV, "CROSSLOGIC_GATEWAY_ADVERTISE_URL": ""}, template()))
    assert "advertise_url" not in args["gateway"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"CROSSLOGIC_REGION": ""}, "CROSSLOGIC_REGION is not set"),
        ({"CROSSLOGIC_MODELS": " , "}, "names no model"),
        ({"CROSSLOGIC_MODELS": "a=x,a=y"}, "twice"),
        ({"CROSSLOGIC_MODELS": "=src"}, "expected served_name=source"),
        ({"CROSSLOGIC_GPUS_PER_REPLICA": "0"}, "at least 1"),
        ({"CROSSLOGIC_GATEWAY_PORT": "http"}, "CROSSLOGIC_GATEWAY_PORT"),
        ({"CROSSLOGIC_REGION": "EU West"}, "region"),
        ({"CROSSLOGIC_CONTROL_PLANE_URL": "cp.example.com"}, "control_plane_url"),
    ],
)
def test_bad_env_is_refused_with_the_reason(change: dict[str, str], message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render({**ENV, **change}, template())


def test_command_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "region_config.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "crosslogic.cloud.render_region_config", "--out", str(out)],
        env={"PATH": "/usr/bin:/bin", **ENV}, capture_output=True, text=True, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert region_args(yaml.safe_load(out.read_text()))["region"] == "eu-west"
    bad = subprocess.run(
        [sys.executable, "-m", "crosslogic.cloud.render_region_config"],
        env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, cwd=REPO_ROOT,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip() == "render_region_config: CROSSLOGIC_REGION is not set"


def test_version_check_names_both_sides() -> None:
    pinned = load_versions()
    assert check_versions.differences(pinned, {**pinned, "torch": "2.13.0+cu128"}) == []
    assert check_versions.differences(pinned, {**pinned, "vllm": "0.31.1"}) == [
        f"vllm: pinned {pinned['vllm']}, installed 0.31.1"
    ]
    # This environment is installed from the same pins.
    env = {VERSION_ENVS[k]: v for k, v in pinned.items()}
    assert check_versions.main(env) == 0
    assert check_versions.main({**env, "CROSSLOGIC_RAY_VERSION": "2.59.0"}) == 1
    assert check_versions.main({}) == 1


def test_control_plane_listener_rewrite_keeps_the_rest() -> None:
    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    moved = with_listener(config, "0.0.0.0", 8000)
    assert moved["http_options"]["host"] == "0.0.0.0"
    assert {k: v for k, v in moved["http_options"].items() if k not in ("host", "port")} == {
        k: v for k, v in config["http_options"].items() if k not in ("host", "port")
    }
    assert moved["applications"] == config["applications"]
