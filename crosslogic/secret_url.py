"""A connection URL that may carry a password (PostgreSQL DSN, Redis URL), masked wherever it is shown.

The URL itself stays whole (drivers want it as is); only its display hides the password, so an
operator still reads which server and database a message is about.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr

MASK = "***"
# libpq also takes the password as a query parameter (`?password=...`).
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})


def redact_url(url: str) -> str:
    """The URL with any password (user-info or query parameter) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        # Unparseable: nothing of it is safe to show.
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.partition(':')[0]}:{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key.lower() in _SECRET_QUERY_KEYS for key, _ in pairs):
            query = urlencode(
                [(key, MASK if key.lower() in _SECRET_QUERY_KEYS else value) for key, value in pairs], safe="*"
            )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class SecretURL(SecretStr):
    """A `SecretStr` whose repr/str show the URL with its password masked.

    `get_secret_value()` is the only way to the full URL; JSON dumps show `**********` like any
    `SecretStr`.
    """

    def _display(self) -> str:
        return redact_url(self.get_secret_value())
