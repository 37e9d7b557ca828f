"""Route templates for Django. Nothing is needed: the worker leaves the route
Django resolved where it reads it (`routes._watch_django`). This middleware
does the same, for a Django without `BaseHandler.resolve_request` (the
worker then says so once)::

    MIDDLEWARE = [..., "gunicorn_prometheus_exporter.django.RouteMiddleware"]

The route is the pattern Django resolved (`users/<int:uid>`), as
`request.resolver_match.route` gives it, `/` for the root pattern; empty when
nothing matched.
"""

from __future__ import annotations

from typing import Any, Callable

from .routes import ROUTE_KEY, django_route


class RouteMiddleware:
    """Leaves the resolved route template where the worker reads it."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        route = django_route(getattr(request, "resolver_match", None))
        if route is not None:
            request.environ[ROUTE_KEY] = route
