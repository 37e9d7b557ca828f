"""Route templates: the template a framework matched, never the raw
path; nothing for unmatched paths; a cap on distinct values per worker."""

from __future__ import annotations

import pytest
from conftest import request, wait_for

PACKAGE = "gunicorn_prometheus_exporter"

# app, worker class, [(path, expected route)], route of the 404s
FRAMEWORKS = {
    "flask": ("flask_app:app", "PrometheusWorker",
              [("/users/1", "/users/<int:uid>"), ("/users/22", "/users/<int:uid>"),
               ("/items/a", "/items/<name>"), ("/", "/")]),
    "fastapi": ("fastapi_app:app", "PrometheusUvicornWorker",
                [("/users/1", "/users/{uid}"), ("/users/22", "/users/{uid}"),
                 ("/admin/reports/7", "/admin/reports/{rid}"), ("/", "/")]),
    "django": ("django_app:app", "PrometheusThreadWorker",
               [("/users/1", "users/<int:uid>"), ("/users/22", "users/<int:uid>"),
                ("/", "/")]),
    # The same routes with the middleware a Django without resolve_request needs.
    "django-middleware": ("django_app:app", "PrometheusWorker",
                          [("/users/1", "users/<int:uid>"), ("/users/22", "users/<int:uid>"),
                           ("/", "/")]),
}
ENV = {"django-middleware": {"DJANGO_ROUTE_MIDDLEWARE": "1"}}


def routes_of(m, name: str = "gunicorn_worker_requests_total") -> dict[str, float]:
    out: dict[str, float] = {}
    for s in m.matching(name):
        out[s.labels["route"]] = out.get(s.labels["route"], 0) + s.value
    return out


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_requests_are_counted_per_route_template_and_404s_add_no_series(gunicorn, framework):
    app, worker, paths = FRAMEWORKS[framework]
    g = gunicorn(["--worker-class", f"{PACKAGE}.{worker}"], app=app, workers=1,
                 env=ENV.get(framework))
    rounds = 3
    for _ in range(rounds):
        for path, _route in paths:
            assert request(g.port, "GET", path)[0] == 200, path
    expected: dict[str, float] = {}
    for _path, route in paths:
        expected[route] = expected.get(route, 0) + rounds
    m = wait_for(lambda: (m := g.scrape_idle()).get("gunicorn_worker_requests_total")
                 == rounds * len(paths) and m, what="all requests counted")
    assert routes_of(m) == expected
    series = len(m.matching("gunicorn_worker_requests_total"))
    # A 404 storm of random paths: one series (route ""), however many paths.
    for i in range(40):
        assert request(g.port, "GET", f"/nothing/{i}/here")[0] == 404
    m = wait_for(lambda: (m := g.scrape_idle()).get("gunicorn_worker_requests_total")
                 == rounds * len(paths) + 40 and m, what="the 404s counted")
    assert m.get("gunicorn_worker_requests_total", route="", status="404") == 40
    assert len(m.matching("gunicorn_worker_requests_total")) == series + 1
    assert m.get("gunicorn_worker_request_duration_seconds_count", route=paths[0][1]) == 2 * rounds


def test_routes_past_the_cap_are_other_and_the_overflow_is_counted(gunicorn):
    # The environ key any framework can set; the test app sets it from the query.
    g = gunicorn(env={"PROMETHEUS_MAX_LABEL_VALUES": "3"}, app="wsgi_app:app", workers=1)
    for i in range(6):
        for _ in range(2):
            assert request(g.port, "GET", f"/?route=/r{i}")[0] == 200
    m = wait_for(lambda: (m := g.scrape_idle()).get("gunicorn_worker_requests_total") == 12
                 and m, what="twelve requests")
    assert routes_of(m) == {"/r0": 2, "/r1": 2, "/r2": 2, "other": 6}
    assert m.get("gunicorn_worker_label_overflow_total", label="route") == 6


def test_failed_requests_carry_the_route(gunicorn):
    g = gunicorn(app="wsgi_app:app", workers=1)
    assert request(g.port, "GET", "/raise?route=/boom")[0] == 500
    m = wait_for(lambda: (m := g.scrape_idle()).get("gunicorn_worker_failed_requests_total") == 1
                 and m, what="the failure")
    assert m.get("gunicorn_worker_failed_requests_total", route="/boom",
                 error_type="AppFailure") == 1


def test_a_bad_cap_stops_gunicorn_with_one_error_line(tmp_path):
    from conftest import failed_start

    code, errors, _ = failed_start({"PROMETHEUS_MAX_LABEL_VALUES": "lots"})
    assert code != 0
    assert len(errors) == 1 and "PROMETHEUS_MAX_LABEL_VALUES" in errors[0], errors
