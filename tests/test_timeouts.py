"""Timeout forensics: the request in flight when the arbiter aborts
a worker is counted by method and route, and its stack is logged once."""

from __future__ import annotations

from conftest import request_in_background, wait_for


def test_a_timed_out_request_is_counted_and_its_stack_logged_once(gunicorn):
    g = gunicorn(["--timeout", "2"], workers=1)
    client = request_in_background(g.port, "/sleep/30?route=/slow")
    try:
        m = wait_for(lambda: (m := g.scrape()).get_or(
            "gunicorn_worker_request_timeouts_total", 0) >= 1 and m,
            timeout=60, what="the timeout counted")
        assert m.get("gunicorn_worker_request_timeouts_total", method="GET", route="/slow",
                     worker_id="1") == 1
        assert m.get("gunicorn_worker_request_timeouts_total") == 1
        # An abort is not the application's failure.
        assert m.get_or("gunicorn_worker_failed_requests_total", 0) == 0
        log = wait_for(lambda: "time.sleep(float(" in (out := g.output()) and out,
                       what="the stack in the log")
        assert log.count("Request GET /sleep/30 timed out") == 1, log
        block = log.split("Request GET /sleep/30 timed out", 1)[1]
        assert "wsgi_app.py" in block and "time.sleep(float(" in block
    finally:
        client.kill()
        client.wait()
