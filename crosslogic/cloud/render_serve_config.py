"""`python -m crosslogic.cloud.render_serve_config SRC --host H --port P --out DST`: the control
plane's Serve config with the API's listener moved to the port its cluster opens.

serve_config.yaml binds the API to loopback for a laptop; on the control-plane cluster
(cluster_configs/control-plane.yaml) the API is what clients reach. Everything else is kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml


def with_listener(config: dict[str, Any], host: str, port: int) -> dict[str, Any]:
    http = dict(config.get("http_options") or {})
    http.update({"host": host, "port": port})
    return {**config, "http_options": http}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crosslogic.cloud.render_serve_config")
    parser.add_argument("source", type=Path)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.source.read_text())
    if not isinstance(config, dict) or not config.get("applications"):
        print(f"render_serve_config: {args.source} is not a Serve config", file=sys.stderr)
        return 1
    args.out.write_text(yaml.safe_dump(with_listener(config, args.host, args.port), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
