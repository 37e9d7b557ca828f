"""Route templates with no configuration.

Any framework can leave the template it matched in the WSGI environ or the
ASGI scope under `ROUTE_KEY`. Starlette / FastAPI routes (`scope["route"]`)
and Flask / Werkzeug rules are read by the core itself; Flask clears its
request from the environ before Gunicorn logs the response, so the template is
copied to the environ when Flask tears the request down. Django needs
`gunicorn_prometheus_exporter.django.RouteMiddleware`.
"""

from __future__ import annotations

import sys
from typing import Any

ROUTE_KEY = "gunicorn_prometheus_exporter.route"

_flask_connected = False


def _copy_flask_rule(sender: Any, **kwargs: Any) -> None:
    ctx = _cv_request.get(None)
    if ctx is None:
        return
    rule = ctx.request.url_rule
    if rule is not None:
        ctx.request.environ[ROUTE_KEY] = rule.rule


def watch_frameworks() -> bool:
    """Called once the application is loaded: hooks the frameworks it imported.
    Whether it loaded Flask (the core then also reads the rule of a Flask
    request still in the environ)."""
    global _flask_connected, _cv_request
    if "flask" not in sys.modules:
        return False
    if _flask_connected:
        return True
    try:
        from flask.globals import _cv_request
        from flask.signals import request_tearing_down
    except ImportError:  # a Flask without them: the rule in the environ, or the environ key
        return True
    request_tearing_down.connect(_copy_flask_rule, weak=False)
    _flask_connected = True
    return True
