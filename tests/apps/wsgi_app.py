"""A WSGI application for the tests and the demo.

Paths: /           200 "hello"
       /status/N   answers status N
       /raise      the application raises ValueError
       /sleep/S    sleeps S seconds, then 200
       /echo       200 with the request body
       ?route=R    leaves R as the route template (the environ key of the exporter)
       ?exclude=1  marks the request as not counted (gunicorn_prometheus_exporter.exclude_request)
"""

import time


class AppFailure(ValueError):
    pass


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    query = environ.get("QUERY_STRING", "")
    if query.startswith("route="):
        environ["gunicorn_prometheus_exporter.route"] = query[len("route="):]
    if query == "exclude=1":
        from gunicorn_prometheus_exporter import exclude_request

        exclude_request(environ)
    if path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        start_response(f"{code} Status", [("Content-Type", "text/plain")])
        return [b"status\n"]
    if path == "/raise":
        raise AppFailure("the application failed")
    if path.startswith("/sleep/"):
        time.sleep(float(path.rsplit("/", 1)[1]))
    body = b"hello\n"
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _gunicorn_logger():
    from gunicorn import glogging

    return glogging.Logger


class ReadOnlyAccessLogger(_gunicorn_logger()):
    """A logger class (`--logger-class`) whose `access` is a read-only
    property: the exporter cannot set the attribute and wraps the logger."""

    @property
    def access(self):
        return super().access
