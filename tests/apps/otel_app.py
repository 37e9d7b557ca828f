"""Applications traced with OpenTelemetry's SDK (a TracerProvider of their
own, no exporter): each request runs in a span and answers with the span's
ids, `<trace_id>-<span_id>` in hex.

`app` (WSGI) and `asgi_app` (ASGI) serve:
  /sleep/<seconds>  sleeps in a sampled span, then answers in it
  /unsampled        answers in a span the sampler dropped
"""

import asyncio
import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

tracer = TracerProvider().get_tracer(__name__)
unsampled_tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer(__name__)


def _ids(span):
    context = span.get_span_context()
    return f"{context.trace_id:032x}-{context.span_id:016x}".encode()


def app(environ, start_response):
    path = environ["PATH_INFO"]
    chosen = unsampled_tracer if path == "/unsampled" else tracer
    with chosen.start_as_current_span("handle") as span:
        if path.startswith("/sleep/"):
            time.sleep(float(path.rsplit("/", 1)[1]))
        body = _ids(span)
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    chosen = unsampled_tracer if path == "/unsampled" else tracer
    with chosen.start_as_current_span("handle") as span:
        if path.startswith("/sleep/"):
            await asyncio.sleep(float(path.rsplit("/", 1)[1]))
        body = _ids(span)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})
