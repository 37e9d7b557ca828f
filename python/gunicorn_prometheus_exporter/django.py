"""Route templates for Django: add the middleware, anywhere in the list::

    MIDDLEWARE = [..., "gunicorn_prometheus_exporter.django.RouteMiddleware"]

The route is the pattern Django resolved (`users/<int:uid>`), as
`request.resolver_match.route` gives it; empty when nothing matched.
"""

from __future__ import annotations

from typing import Any, Callable

from .routes import ROUTE_KEY


class RouteMiddleware:
    """Leaves the resolved route template where the worker reads it."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        match = getattr(request, "resolver_match", None)
        route = getattr(match, "route", None)
        if route is not None:
            request.environ[ROUTE_KEY] = route
