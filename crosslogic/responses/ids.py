"""Response ids: `resp_<32 hex>`, the same hex as the server's request id that made the response.

One id maps to the other both ways, so a stored response leads to its usage-ledger row (keyed by the
request id) and back, and the engine can name the response without another round trip.
"""

from __future__ import annotations

import re

from crosslogic.api.request_ids import SERVER_ID

RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}\Z")
_REQUEST_PREFIX = "req_"
_RESPONSE_PREFIX = "resp_"


def response_id(request_id: str) -> str:
    """The response id of the request `request_id` (a server id, `req_<32 hex>`)."""
    if not SERVER_ID.match(request_id):
        raise ValueError(f"not a server request id: {request_id!r}")
    return _RESPONSE_PREFIX + request_id[len(_REQUEST_PREFIX):]


def request_id_of(response: str) -> str:
    """The server request id (the usage ledger's key) of the response `response`."""
    if not RESPONSE_ID.match(response):
        raise ValueError(f"not a response id: {response!r}")
    return _REQUEST_PREFIX + response[len(_RESPONSE_PREFIX):]
