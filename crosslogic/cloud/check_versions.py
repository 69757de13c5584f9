"""`python -m crosslogic.cloud.check_versions`: do the installed versions match what the cluster
task pinned (the CROSSLOGIC_*_VERSION envs `crosslogic cluster up` filled from versions.yaml)?

Runs at the end of a cluster's `setup`, so a drifted install fails there, naming both versions,
instead of being refused later at registration.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

from crosslogic.cloud.task_spec import VERSION_ENVS
from crosslogic.regions.versions import local_versions, public_version


def differences(pinned: Mapping[str, str], installed: Mapping[str, str]) -> list[str]:
    return [
        f"{name}: pinned {pinned[name]}, installed {installed.get(name, 'not installed')}"
        for name in pinned
        if public_version(installed.get(name, "")) != public_version(pinned[name])
    ]


def installed_versions() -> dict[str, str]:
    python = ".".join(platform.python_version_tuple()[:2])
    return {"python": python, **local_versions().model_dump()}


def main(env: Mapping[str, str] = os.environ) -> int:
    missing = [name for name in VERSION_ENVS.values() if not env.get(name)]
    if missing:
        print(f"check_versions: {', '.join(missing)} not set", file=sys.stderr)
        return 1
    pinned = {key: env[name] for key, name in VERSION_ENVS.items()}
    problems = differences(pinned, installed_versions())
    for problem in problems:
        print(f"check_versions: {problem}", file=sys.stderr)
    if not problems:
        print("versions match: " + ", ".join(f"{k} {v}" for k, v in pinned.items()))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
