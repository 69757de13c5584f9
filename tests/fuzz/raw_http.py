"""A deliberately naive HTTP/1.1 client over a plain socket: it sends exactly the bytes a case
builds (header values no client library would send, Content-Length that lies, bodies in any
encoding) and reads whatever comes back until the server closes the connection."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class RawResponse:
    status: int  # 0: the server closed the connection without an answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def build_request(
    method: str, path: str, host: str, headers: list[tuple[bytes, bytes]], body: bytes, *, content_length: bool = True
) -> bytes:
    """The request's bytes: our header lines as given (no validation), Connection: close, and a
    correct Content-Length unless the case sets its own (`content_length=False`)."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"host: " + host.encode()]
    lines += [name + b": " + value for name, value in headers]
    if content_length and body:
        lines.append(b"content-length: " + str(len(body)).encode())
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def send_raw(host: str, port: int, request: bytes, *, timeout_s: float = 60.0, half_close: bool = False) -> RawResponse:
    """Send `request`, read until EOF. `half_close`: shut our side after sending (a body shorter
    than its Content-Length would otherwise keep the server waiting for the rest)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        if half_close and writer.can_write_eof():
            writer.write_eof()
        raw = await asyncio.wait_for(reader.read(-1), timeout_s)
    except (ConnectionResetError, BrokenPipeError):
        return RawResponse(status=0)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionResetError, BrokenPipeError):
            pass
    return parse_response(raw)


def parse_response(raw: bytes) -> RawResponse:
    """The first response in `raw` (a server may answer a lying request with a second one)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/"):
        return RawResponse(status=0, body=raw[:1000])
    status_line, *header_lines = head.split(b"\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    status = int(status_line.split()[1])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(rest)
    elif "content-length" in headers and headers["content-length"].isdigit():
        body = rest[: int(headers["content-length"])]
    else:
        body = rest
    return RawResponse(status=status, headers=headers, body=body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return bytes(out)
