"""Request queue time: from the proxy's X-Request-Start, else from
the kernel (how long the request's bytes waited before a worker took them)."""

from __future__ import annotations

import socket
import time

from conftest import wait_for

QUEUE = "gunicorn_worker_request_queue_seconds"


def send_raw(port: int, path: str, headers: dict[str, str] | None = None) -> socket.socket:
    """Connects and sends a whole request; the caller reads the answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    lines = [f"GET {path} HTTP/1.1", "Host: test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return s


def answer(s: socket.socket) -> bytes:
    with s:
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    return data


def buckets(m) -> dict[str, float]:
    return {s.labels["le"]: s.value for s in m.matching(f"{QUEUE}_bucket")}


def test_kernel_wait_of_three_requests_queued_behind_one_sync_worker(gunicorn):
    g = gunicorn(workers=1)
    clients = [send_raw(g.port, "/sleep/0.3") for _ in range(3)]
    for c in clients:
        answer(c)
    m = wait_for(lambda: (m := g.scrape_idle()).get(f"{QUEUE}_count") == 3 and m,
                 what="three queue times")
    b = buckets(m)
    # About 0, 0.3 and 0.6 s: one each side of 0.25 and of 0.5.
    assert (b["0.1"], b["0.25"], b["0.5"], b["1.0"]) == (1, 1, 2, 3), b


def test_every_header_format_gives_the_proxy_queue_time(gunicorn):
    g = gunicorn(workers=1)
    for value in (lambda t: f"t={t:.3f}",            # nginx t=${msec}
                  lambda t: f"{int(t * 1e3)}",        # Heroku, milliseconds
                  lambda t: f"t={int(t * 1e6)}",      # microseconds
                  lambda t: f"{int(t * 1e9)}"):       # nanoseconds
        for header in ("X-Request-Start", "X-Queue-Start"):
            answer(send_raw(g.port, "/", {header: value(time.time() - 0.2)}))
    # Garbage, and a stamp far in the future: ignored, the kernel's wait
    # counts: 0 for a request that reaches a worker idle for over 2 ms.
    for bad in ("t=soon", f"t={time.time() + 60:.3f}"):
        g.scrape_idle()
        time.sleep(0.01)  # the idle gap that the rule is about
        answer(send_raw(g.port, "/", {"X-Request-Start": bad}))
    m = wait_for(lambda: (m := g.scrape_idle()).get(f"{QUEUE}_count") == 10 and m,
                 what="ten queue times")
    b = buckets(m)
    assert (b["0.1"], b["0.25"], b["+Inf"]) == (2, 10, 10), b
    assert 8 * 0.2 <= m.get(f"{QUEUE}_sum") < 8 * 0.25 + 2 * 0.1


def test_unix_socket_requests_get_queue_time_from_the_header_only(gunicorn, tmp_path):
    path = tmp_path / "app.sock"
    g = gunicorn(["--bind", f"unix:{path}"], workers=1)

    def unix_raw(headers: dict[str, str]) -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(15)
        s.connect(str(path))
        lines = ["GET / HTTP/1.1", "Host: t", "Connection: close",
                 *(f"{k}: {v}" for k, v in headers.items())]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return s

    def over_unix(headers: dict[str, str]) -> None:
        answer(unix_raw(headers))

    # A request queued on the Unix socket behind a TCP one: never a kernel
    # figure (the kernel does not tell); the TCP one reached an idle worker: 0.
    # Gunicorn 27 lingers after a response until its client closes: if that
    # took 2 ms or more, the Unix request also looks fresh from idle (0).
    busy = send_raw(g.port, "/sleep/0.3")
    wait_for(lambda: g.scrape().get("gunicorn_worker_requests_in_flight") == 1,
             what="the worker busy")
    queued = unix_raw({})
    answer(busy)
    answer(queued)
    m = wait_for(lambda: (m := g.scrape_idle()).get("gunicorn_worker_requests_total") == 2 and m,
                 what="two requests")
    zeros = m.get(f"{QUEUE}_count")
    assert zeros in (1, 2) and m.get(f"{QUEUE}_sum") == 0, (zeros, m.get(f"{QUEUE}_sum"))
    over_unix({"X-Request-Start": f"t={time.time() - 0.2:.3f}"})  # the header counts
    m = wait_for(lambda: (m := g.scrape_idle()).get("gunicorn_worker_requests_total") == 3 and m,
                 what="three requests")
    b = buckets(m)
    assert (b["0.1"], b["0.25"], b["+Inf"]) == (zeros, zeros + 1, zeros + 1), b
