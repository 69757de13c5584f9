"""What `crosslogic local region up` deploys, checked without starting anything: the generated Serve
config is a valid region app config built from the repository's region_config.yaml, with this
region's name, ports and TLS files, and never its secret."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crosslogic.cli.main import build_parser
from crosslogic.localstack.region_stack import RegionStack, default_template
from crosslogic.regions.app_config import RegionAppConfig
from crosslogic.regions.config import TlsClientConfig
from crosslogic.regions.signing import encode_secret

REPO = Path(__file__).resolve().parents[3]
SECRET = bytes(range(32))


def test_the_template_is_the_repository_region_config() -> None:
    assert default_template() == REPO / "region_config.yaml"
    config = yaml.safe_load(default_template().read_text())
    app = config["applications"][0]
    assert app["import_path"] == "deployments.region_app:build_region_app" and app["route_prefix"] is None
    RegionAppConfig.model_validate(app["args"])
    # The region serves the control plane's dev chat model the same way (same engine env).
    control = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]["models"][0]
    assert app["args"]["models"][0]["env"] == control["env"]
    assert app["args"]["models"][0]["source"] == control["source"]


def test_generated_config_carries_name_ports_and_tls_but_no_secret() -> None:
    stack = RegionStack(
        name="eu-laptop", control_plane_url="https://127.0.0.1:8000", secret=SECRET, gateway_port=18443,
        tls_certfile="/c/server.pem", tls_keyfile="/c/server.key", client_ca="/c/ca.pem",
        agent_tls=TlsClientConfig(ca_bundle="/c/ca.pem"), interval_s=1.5,
    )
    config = stack.config()
    args = RegionAppConfig.model_validate(config["applications"][0]["args"])
    assert args.region == "eu-laptop"
    assert args.gateway.port == 18443 and args.gateway.client_ca == "/c/ca.pem"
    assert args.agent.control_plane_url == "https://127.0.0.1:8000" and args.agent.interval_s == 1.5
    assert args.agent.tls.ca_bundle == "/c/ca.pem"
    assert all(m.num_replicas == 1 for m in args.models)
    assert config["http_options"]["port"] not in (8000, 6379)
    assert stack.gateway_url == "https://127.0.0.1:18443"
    text = yaml.safe_dump(config)
    assert encode_secret(SECRET) not in text and SECRET.hex() not in text


def test_cli_registers_local_region_up_and_down() -> None:
    parser = build_parser()
    args = parser.parse_args(["local", "region", "up", "--name", "r2", "--control-plane", "http://127.0.0.1:8000",
                              "--secret-file", "/tmp/s"])
    assert args.handler.__name__ == "_up" and args.name == "r2" and args.gateway_port == 0
    assert parser.parse_args(["local", "region", "down", "--name", "r2"]).handler.__name__ == "_down"
    # `local up` itself is unchanged.
    assert parser.parse_args(["local", "up"]).handler.__name__ == "_up"


def test_up_refuses_a_bad_secret_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "secret"
    bad.write_text("not hex")
    parser = build_parser()
    args = parser.parse_args(["local", "region", "up", "--name", "r2", "--control-plane", "http://127.0.0.1:8000",
                              "--secret-file", str(bad)])
    assert args.handler(args) == 1
    assert "64 hex characters" in capsys.readouterr().err
