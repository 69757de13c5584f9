"""Which region a request prefers: the `x-crosslogic-region` header, else the API key's, else its tenant's.

A malformed header is the client's mistake (400, param `x-crosslogic-region`). A well-formed name
that no live region answers to (unknown, drained, not serving the model) is not an error: regions come
and go at any hour, and a client pinned to one must keep being served, so the request is placed as if
it had no preference (least loaded; crosslogic/regions/selector.py).
"""

from __future__ import annotations

import re

from crosslogic.auth.context import AuthContext
from crosslogic.errors import InvalidRequestError
from crosslogic.regions.signing import REGION_NAME_PATTERN

PREFERENCE_HEADER = "x-crosslogic-region"
_NAME = re.compile(REGION_NAME_PATTERN)


def region_preference(header: str | None, auth: AuthContext) -> str | None:
    if header is not None and header.strip():
        name = header.strip().lower()
        if not _NAME.fullmatch(name):
            raise InvalidRequestError(
                f"{PREFERENCE_HEADER} must be a region name: lowercase letters, digits and '-', "
                "at most 63 characters, starting with a letter or digit",
                param=PREFERENCE_HEADER, code="invalid_region",
            )
        return name
    return auth.preferred_region
