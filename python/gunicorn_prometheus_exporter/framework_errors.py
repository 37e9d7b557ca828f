"""Exceptions a framework answered itself, counted as failures with no
configuration.

Flask and Django turn an exception a view raised into a 500 response of
their own, so it never reaches the worker. Both announce it first
(`got_request_exception`): the worker counts it there, with the exception's
class, the request's method and the route template it matched. The core
marks the exception as counted, so one that then also reaches the worker
(Flask's PROPAGATE_EXCEPTIONS, Django's DEBUG_PROPAGATE_EXCEPTIONS) is not
counted twice. Starlette and FastAPI need nothing: their server error
middleware raises the exception again after answering, and the ASGI worker
counts it (`asgi.MeteredASGI`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from . import _core
from .routes import django_route

log = logging.getLogger("gunicorn.error")

#: The meter of this process's worker; connected signals count on it.
_meter: _core.WorkerMeter | None = None
_connected: set[str] = set()


def watch(meter: _core.WorkerMeter) -> None:
    """Called once the application is loaded: listens to the frameworks it imported."""
    global _meter
    _meter = meter
    if "flask" in sys.modules and "flask" not in _connected:
        _connect("flask", _flask)
    if "django" in sys.modules and "django" not in _connected:
        _connect("django", _django)


def _connect(framework: str, connect: Any) -> None:
    try:
        connect()
    except Exception:  # noqa: BLE001 - a framework too old or broken: no such failures
        log.debug("gunicorn_prometheus_exporter: %s's exceptions are not counted", framework,
                  exc_info=True)
        return
    _connected.add(framework)


def _flask() -> None:
    from flask import request
    from flask.signals import got_request_exception

    def counted(sender: Any, exception: BaseException | None = None, **extra: Any) -> None:
        meter = _meter
        if meter is None or exception is None:
            return
        try:
            rule = request.url_rule
            route = rule.rule if rule is not None else None
            meter.application_failed(request.environ, exception, route)
        except Exception:  # noqa: BLE001 - metrics never break a request
            pass

    got_request_exception.connect(counted, weak=False)


def _django() -> None:
    from django.core.signals import got_request_exception

    def counted(sender: Any, request: Any = None, **extra: Any) -> None:
        meter, exception = _meter, sys.exc_info()[1]
        if meter is None or exception is None or request is None:
            return
        try:
            # A WSGI request has its environ, an ASGI one its scope.
            mapping = getattr(request, "environ", None) or getattr(request, "scope", None)
            route = django_route(getattr(request, "resolver_match", None))
            if mapping is not None:
                meter.application_failed(mapping, exception, route)
        except Exception:  # noqa: BLE001 - metrics never break a request
            pass

    got_request_exception.connect(counted, weak=False)
