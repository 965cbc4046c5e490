"""Connection timeouts of `r1lab serve` (issue 14): a client that never finishes its request
headers is disconnected after ``--client-timeout``; a request being served is never cut.

uvicorn has no header timeout (its keep-alive timer stops as soon as a byte arrives), so headers
trickled one byte at a time held a connection forever. ``server._header_timeout_protocol`` wraps
uvicorn's h11 protocol (the one the server uses); these tests run uvicorn with it on a loopback
port and a tiny ASGI app, with a 0.6 s timeout.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

TIMEOUT_S = 0.6
WAIT_S = 10.0          # upper bound for "closed soon": generous on a loaded machine, never a speed claim


async def _app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    if scope["path"] == "/slow":          # a response that takes 3 timeouts
        for _ in range(6):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await asyncio.sleep(TIMEOUT_S / 2)
    await send({"type": "http.response.body", "body": b"ok", "more_body": False})


@pytest.fixture
def port():
    import uvicorn

    from r1lab.serve.server import _header_timeout_protocol

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_app, http=_header_timeout_protocol(TIMEOUT_S), loop="asyncio",
                            log_level="warning", lifespan="off", timeout_keep_alive=60)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(5)


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    return s


def _closed_after_trickle(s: socket.socket) -> float:
    """Send one header byte every 0.1 s until the server closes; seconds until it did."""
    t0 = time.monotonic()
    s.settimeout(0.1)
    while time.monotonic() - t0 < WAIT_S:
        try:
            if s.recv(4096) == b"":
                return time.monotonic() - t0
        except socket.timeout:
            pass
        except ConnectionResetError:
            return time.monotonic() - t0
        try:
            s.send(b"a")
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - t0
    raise AssertionError(f"the connection was still open after {WAIT_S} s of trickled headers")


def _get(s: socket.socket, path: str) -> bytes:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    s.settimeout(WAIT_S)
    while not data.endswith(b"0\r\n\r\n") and not (b"content-length" in data.lower() and data.endswith(b"ok")):
        chunk = s.recv(4096)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    return data


def test_trickled_headers_are_cut_after_the_timeout(port):
    s = _connect(port)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    took = _closed_after_trickle(s)
    assert TIMEOUT_S * 0.8 <= took, f"closed after {took:.2f} s, before the {TIMEOUT_S} s timeout"
    s.close()
    with _connect(port) as s2:                   # the server goes on serving
        assert b"ok" in _get(s2, "/")


def test_a_response_longer_than_the_timeout_is_not_cut(port):
    with _connect(port) as s:
        data = _get(s, "/slow")
        assert b"xxxxxx" in data.replace(b"1\r\nx\r\n", b"x") and data.startswith(b"HTTP/1.1 200")


def test_next_request_on_a_kept_alive_connection_gets_the_same_timeout(port):
    s = _connect(port)
    assert b"ok" in _get(s, "/")
    time.sleep(TIMEOUT_S / 3)                    # a prompt next request is served ...
    assert b"ok" in _get(s, "/slow")
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... one whose headers never end is cut
    took = _closed_after_trickle(s)
    assert TIMEOUT_S * 0.8 <= took + 0.15, f"closed after {took:.2f} s"
    s.close()
