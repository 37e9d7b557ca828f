"""Exemplars from the current OpenTelemetry span, for requests that came
without a W3C `traceparent` header.

A worker counts a request after the application returned (WSGI: where
Gunicorn logs the response; ASGI: once the application's coroutine ended), and
by then the span the application ran in is no longer current: OpenTelemetry's
WSGI middleware and `tracer.start_as_current_span(...)` blocks detach it as
the application returns. So the ids are read where the span is still current:
when the application starts its response (WSGI `start_response`, ASGI
`http.response.start`). They are left in the environ / scope under `SPAN_KEY`
as (trace_id, span_id), which the core reads exactly where it reads the
header; a valid `traceparent` header wins (it is what the caller sent).

Only a valid, sampled span is taken: an unsampled span's trace is recorded
nowhere, so an exemplar would lead nowhere.

Nothing here costs a request anything unless the application imported
`opentelemetry` by the time it was loaded (`watching()`); any error reading
the span means no exemplar, never an exception in the worker.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

#: Where the span's ids are left; read by the core (src/python/request.rs).
SPAN_KEY = "gunicorn_prometheus_exporter.span"

_get_current_span: Callable[[], Any] | None = None
_no_span: Any = None  # opentelemetry.trace.INVALID_SPAN: what get_current_span gives without one


def watching() -> bool:
    """Whether the loaded application uses OpenTelemetry (it imported its
    trace API); if so, the API is imported here once and kept."""
    global _get_current_span, _no_span
    if _get_current_span is not None:
        return True
    if "opentelemetry.trace" not in sys.modules:
        return False
    try:
        from opentelemetry.trace import INVALID_SPAN, get_current_span
    except Exception:  # noqa: BLE001 - a broken install means no exemplars
        return False
    _no_span, _get_current_span = INVALID_SPAN, get_current_span
    return True


def current() -> tuple[int, int] | None:
    """(trace_id, span_id) of the current span if it is valid and sampled."""
    get = _get_current_span
    if get is None:
        return None
    try:
        span = get()
        if span is _no_span:
            return None
        context = span.get_span_context()
        if context.trace_flags & 1 and context.is_valid:  # 1: sampled
            return context.trace_id, context.span_id
    except Exception:  # noqa: BLE001 - metrics never break a request
        pass
    return None


class SpanCapturingWSGI:
    """Wraps a WSGI application: leaves the current span's ids in the environ
    when the application starts its response."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Any:
        def capturing_start_response(status: str, headers: list, exc_info: Any = None) -> Any:
            ids = current()
            if ids is not None:
                environ[SPAN_KEY] = ids
            return start_response(status, headers, exc_info)

        return self.app(environ, capturing_start_response)

    def __getattr__(self, name: str) -> Any:
        if name == "app":  # not set yet
            raise AttributeError(name)
        return getattr(self.app, name)
