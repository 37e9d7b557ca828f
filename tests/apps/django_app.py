"""A one-file Django application for the route and failure tests: no
configuration for the exporter (the route middleware only with
DJANGO_ROUTE_MIDDLEWARE=1). /fail raises ZeroDivisionError, which Django
turns into a 500 itself."""

import os

import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import include, path

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="tests",
    MIDDLEWARE=(["gunicorn_prometheus_exporter.django.RouteMiddleware"]
                if os.environ.get("DJANGO_ROUTE_MIDDLEWARE") == "1" else []),
)
django.setup()


def user(request, uid):
    return HttpResponse(f"user {uid}\n")


def index(request):
    return HttpResponse("hello\n")


def org_report(request, org, rid):
    return HttpResponse(f"report {rid}\n")


def fail(request):
    return 1 // 0


urlpatterns = [
    path("fail", fail),
    # An include under a path parameter: the route is the whole template.
    path("org/<slug:org>/", include([path("r/<int:rid>", org_report)])),
    path("users/<int:uid>", user),
    path("", index),
]

app = get_wsgi_application()
