"""Timeout forensics: when the arbiter aborts a worker that missed its
timeout (SIGABRT), count each request it was handling and log the Python
stack it hung in, once, in Gunicorn's error log."""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Iterator
from types import CodeType, FrameType
from typing import Any

#: The code of Gunicorn's request handlers the core meters (`instrument.metered`):
#: a frame running one holds the request (`req`) and its WSGI `environ`.
_HANDLERS: set[CodeType] = set()


def watch(handle: Any) -> None:
    """Find the requests `handle` (a Gunicorn request handler) has in flight."""
    _HANDLERS.add(handle.__code__)


def _in_flight(leaf: FrameType) -> Iterator[tuple[Any, Any, int]]:
    """(req, environ, depth) of the metered request on the stack that ends at
    `leaf`, in the handler `depth` frames up from it (the leaf is 1);
    (scope, None, depth) for an ASGI request."""
    from .asgi import MeteredASGI

    asgi_code = MeteredASGI.__call__.__code__
    frame: FrameType | None = leaf
    depth = 0
    while frame is not None:
        code = frame.f_code
        depth += 1
        if code in _HANDLERS and "req" in frame.f_locals:
            environ = frame.f_locals.get("environ")
            yield frame.f_locals["req"], environ if isinstance(environ, dict) else None, depth
            return
        if code is asgi_code and "scope" in frame.f_locals:
            yield frame.f_locals["scope"], None, depth - 1
            return
        frame = frame.f_back


def report(worker: Any, interrupted: FrameType | None) -> int:
    """Counts and logs every request in flight in `worker`; returns how many."""
    frames = sys._current_frames()
    main = threading.main_thread().ident
    if interrupted is not None and main is not None:
        frames[main] = interrupted  # not the signal handler's own frame
    found = 0
    for thread_id, leaf in frames.items():
        for req, environ, depth in _in_flight(leaf):
            found += 1
            worker.meter.request_timed_out(req, environ)
            method, path = _describe(req)
            # From the worker's handler down to the line the request hung on.
            stack = "".join(traceback.format_stack(leaf, limit=depth))
            worker.log.error(
                "Request %s %s timed out (worker pid %s, thread %s); it was here:\n%s",
                method, path, worker.pid, thread_id, stack,
            )
    return found


def _describe(req: Any) -> tuple[str, str]:
    if isinstance(req, dict):
        return str(req.get("method", "?")), str(req.get("path", "?"))
    return str(getattr(req, "method", "?")), str(getattr(req, "path", "?"))
