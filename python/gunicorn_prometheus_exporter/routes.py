"""Route templates with no configuration.

Any framework can leave the template it matched in the WSGI environ or the
ASGI scope under `ROUTE_KEY`. Starlette / FastAPI routes (`scope["route"]`)
and Flask / Werkzeug rules are read by the core itself; Flask clears its
request from the environ before Gunicorn logs the response, so the template is
copied to the environ when Flask tears the request down. Django's resolved
route is left there as Django resolves each request (`BaseHandler.
resolve_request`, wrapped once the application is loaded); where a Django
has no such method, one warning names the middleware that does it
(`gunicorn_prometheus_exporter.django.RouteMiddleware`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

ROUTE_KEY = "gunicorn_prometheus_exporter.route"

log = logging.getLogger("gunicorn.error")

_flask_connected = False
_django_watched = False


def _copy_flask_rule(sender: Any, **kwargs: Any) -> None:
    ctx = _cv_request.get(None)
    if ctx is None:
        return
    rule = ctx.request.url_rule
    if rule is not None:
        ctx.request.environ[ROUTE_KEY] = rule.rule


def django_route(match: Any) -> str | None:
    """The route of a Django `ResolverMatch` (`users/<int:uid>`); the root
    pattern (`""`) is `/`, so that it differs from no route matched."""
    route = getattr(match, "route", None)
    if route is None:
        return None
    return route or "/"


def _watch_django() -> None:
    global _django_watched
    if _django_watched or "django" not in sys.modules:
        return
    _django_watched = True
    try:
        from django.core.handlers.base import BaseHandler
    except Exception:  # noqa: BLE001 - a Django that cannot be imported serves nothing
        return
    resolve = getattr(BaseHandler, "resolve_request", None)
    if resolve is None:
        log.warning("gunicorn_prometheus_exporter: this Django has no "
                    "BaseHandler.resolve_request: add gunicorn_prometheus_exporter.django."
                    "RouteMiddleware to MIDDLEWARE for route labels")
        return

    def resolve_request(self: Any, request: Any) -> Any:
        match = resolve(self, request)
        route = django_route(match)
        if route is not None:
            # A WSGI request has its environ, an ASGI one its scope.
            target = getattr(request, "environ", None)
            if target is None:
                target = getattr(request, "scope", None)
            if isinstance(target, dict):
                target[ROUTE_KEY] = route
        return match

    BaseHandler.resolve_request = resolve_request


def watch_frameworks() -> bool:
    """Called once the application is loaded: hooks the frameworks it imported.
    Whether it loaded Flask (the core then also reads the rule of a Flask
    request still in the environ)."""
    global _flask_connected, _cv_request
    _watch_django()
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


class _MountedRoutes:
    """The template of the whole path of each route reachable through
    Starlette mounts (`Mount("/org/{org}", routes=[Route("/r/{rid}")])` gives
    `/org/{org}/r/{rid}`), by the route object, found once by walking the
    application's routes (again when a route it has not seen matches). A
    route reachable through two mount paths is matched against them."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self.templates: dict[int, list[tuple[Any, str]]] = {}
        self.routes: list[Any] = []  # keeps the routes whose ids are the keys
        self._walk(router, [], "")

    def _walk(self, router: Any, mounts: list[Any], prefix: str) -> None:
        for route in getattr(router, "routes", None) or []:
            path = getattr(route, "path", None)
            if not isinstance(path, str):
                continue
            children = getattr(route, "routes", None)
            if children:  # a Mount (or Host): its routes are under its path
                if len(mounts) < 8:  # a mount cycle cannot recurse forever
                    self._walk(route, [*mounts, route], prefix + path)
                continue
            self.routes.append(route)
            self.templates.setdefault(id(route), []).append((tuple(mounts), prefix + path))

    def template(self, route: Any, path: str) -> str | None:
        found = self.templates.get(id(route))
        if found is None:
            return None
        if len(found) == 1:
            return found[0][1]
        for mounts, template in found:  # the same route under several mounts
            rest = path
            for mount in mounts:
                match = mount.path_regex.match(rest)
                if match is None:
                    break
                rest = "/" + match.groupdict().get("path", "")
            else:
                return template
        return None


_mounted: _MountedRoutes | None = None


def mounted_route(scope: dict) -> str | None:
    """The route template of the whole path of a request a Starlette mount
    led to (the core reads `scope["route"]`, the innermost route, and calls
    this only when `root_path` says a mount matched): never the client's
    values of the mount's own path parameters."""
    global _mounted
    route, router = scope.get("route"), scope.get("router")
    if route is None or router is None:
        return None
    if _mounted is None or _mounted.router is not router:
        _mounted = _MountedRoutes(router)
    template = _mounted.template(route, scope.get("path", ""))
    if template is None and id(route) not in _mounted.templates:
        _mounted = _MountedRoutes(router)  # a route added since the last walk
        template = _mounted.template(route, scope.get("path", ""))
    return template
