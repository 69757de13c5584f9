"""Chat templates shipped with CrossLogic, for models whose own template lacks something we serve.

serve_config names one per model (`engine.chat_template`): the name of a template here (e.g.
`smollm2_tools`, the file `smollm2_tools.jinja` in this package) or an absolute path to a Jinja file.
Names resolve against this package's own directory, never the working directory: a Ray Serve
replica runs wherever Ray put it, and the package is installed on every node that runs an engine.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

PACKAGED_DIR = Path(__file__).resolve().parent
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def packaged_templates() -> list[str]:
    return sorted(p.stem for p in PACKAGED_DIR.glob("*.jinja"))


def chat_template_path(ref: str) -> Path:
    """The file a config's `chat_template` names: a packaged template by name, or an absolute path.

    Raises ValueError naming the choices when it names neither; an absolute path is not required to
    exist here (the config may be checked on a node other than the engine's), the engine checks it.
    """
    if _NAME.match(ref):
        path = PACKAGED_DIR / f"{ref}.jinja"
        if not path.is_file():
            raise ValueError(
                f"unknown chat template {ref!r}: shipped ones are {', '.join(packaged_templates())}; "
                "or give an absolute path to a Jinja file"
            )
        return path
    path = Path(ref)
    if not path.is_absolute():
        # Relative to what? A replica's working directory is Ray's, not the repository's.
        raise ValueError(f"chat template {ref!r}: a shipped template's name or an absolute path")
    return path


def _check(ref: str) -> str:
    chat_template_path(ref)
    return ref


# A config field's type: a packaged template's name or an absolute path, checked when the config loads.
ChatTemplateRef = Annotated[str, AfterValidator(_check)]
