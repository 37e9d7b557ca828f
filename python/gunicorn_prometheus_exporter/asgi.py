"""ASGI workers, metered by wrapping the application: Gunicorn's own ASGI
worker logs responses only when an access log is configured, and uvicorn's
worker never tells Gunicorn about them."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from . import _core, spans
from .instrument import MeteredWorker

Scope = dict
Receive = Callable[[], Any]
Send = Callable[[dict], Any]


class MeteredASGI:
    """Times each HTTP request from its start to the end of its response;
    lifespan and websocket scopes pass through uncounted."""

    def __init__(self, app: Any, meter: _core.WorkerMeter) -> None:
        self.app = app
        self.meter = meter
        self.responses = 0  # for workers whose server counts max-requests itself
        # The application uses OpenTelemetry: its span's ids are taken when
        # the response starts (spans.py says why there).
        self.spans = spans.watching()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        meter = self.meter
        started = meter.asgi_started()
        status = 0
        sent = 0
        capture = self.spans

        async def metered_send(message: dict) -> None:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                if capture:
                    ids = spans.current()
                    if ids is not None:
                        scope[spans.SPAN_KEY] = ids
            elif kind == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, metered_send)
        except asyncio.CancelledError:
            status = 0  # the client went away: no response
            raise
        except BaseException as exc:
            meter.request_failed(scope, exc)
            status = status or 500  # the server answers 500 for it
            raise
        finally:
            if status:
                meter.asgi_answered(started, scope, status, sent)
                self.responses += 1
            meter.asgi_left()


class MeteredASGIWorker(MeteredWorker):
    """Mixin for an ASGI worker class: wraps the application it loaded."""

    serves_wsgi = False

    #: The worker's attribute that holds the loaded application.
    app_attribute = "wsgi"

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app = getattr(self, self.app_attribute)
        setattr(self, self.app_attribute, MeteredASGI(app, self.meter))
