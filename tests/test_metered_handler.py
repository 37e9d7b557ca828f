"""The core's metered request handler (`instrument.metered`), as a small
piece: what Gunicorn's handler receives, returns and raises is unchanged.
Counting itself is checked end to end by the worker suites."""

from __future__ import annotations

from pathlib import Path

import pytest
from gunicorn_prometheus_exporter import _core
from gunicorn_prometheus_exporter.instrument import metered
from prometheus_client.mmap_dict import MmapedDict


class Req:
    method = "GET"


class Handler:
    """Stands in for a Gunicorn worker class: records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def handle_request(self, listener, req, client, addr=None):
        self.calls.append((listener, req, client, addr))
        if isinstance(client, BaseException):
            raise client
        return ("returned", req)


@pytest.fixture
def worker(tmp_path):
    @metered(Handler.handle_request)
    class Metered(Handler):
        pass

    _core.meter_requests_with(
        _core.WorkerMeter(_core.Settings.from_mapping({}), str(tmp_path), 4242, 1, 60.0))
    yield Metered()
    _core.meter_requests_with(None)


def test_the_handler_gets_the_same_arguments_and_its_result_comes_back(worker):
    req = Req()
    assert worker.handle_request("l", req, "c", "a") == ("returned", req)
    assert worker.handle_request("l", req, client="c") == ("returned", req)
    assert worker.handle_request(listener="l", req=req, client="c", addr=5) == ("returned", req)
    assert worker.calls == [("l", req, "c", "a"), ("l", req, "c", None), ("l", req, "c", 5)]


def test_an_exception_comes_out_as_raised(worker):
    error = KeyError("app")
    with pytest.raises(KeyError) as raised:
        worker.handle_request("l", Req(), error)
    assert raised.value is error
    # The traceback still reaches into Gunicorn's handler.
    assert raised.traceback[-1].name == "handle_request"


def test_a_process_without_a_meter_is_served_unmetered(worker):
    _core.meter_requests_with(None)
    req = Req()
    assert worker.handle_request("l", req, "c") == ("returned", req)


def failures_counted_in(directory: Path) -> float:
    return sum(value for path in directory.glob("counter_*.db")
               for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))
               if '"gunicorn_worker_failed_requests_total"' in key)


def test_the_handler_counts_on_the_meter_the_process_has_now(tmp_path):
    @metered(Handler.handle_request)
    class Metered(Handler):
        pass

    first, second = tmp_path / "first", tmp_path / "second"
    worker = Metered()
    for pid, directory in ((5001, first), (5002, second)):
        directory.mkdir()
        _core.meter_requests_with(
            _core.WorkerMeter(_core.Settings.from_mapping({}), str(directory), pid, 1, 60.0))
    try:
        with pytest.raises(KeyError):
            worker.handle_request("l", Req(), KeyError("app"))
        assert (failures_counted_in(first), failures_counted_in(second)) == (0, 1)
        _core.meter_requests_with(None)
        with pytest.raises(KeyError):
            worker.handle_request("l", Req(), KeyError("app"))
        assert (failures_counted_in(first), failures_counted_in(second)) == (0, 1)
    finally:
        _core.meter_requests_with(None)


def test_wrong_arguments_fail_as_they_would_unmetered(worker):
    with pytest.raises(TypeError):
        worker.handle_request("l")  # no req: Gunicorn's handler raises
    with pytest.raises(TypeError):
        worker.handle_request("l", Req(), "c", "a", "extra")


def test_a_handler_without_req_or_of_another_name_is_refused():
    def handle_request(self, listener, client):
        pass

    def handle(self, req):
        pass

    with pytest.raises(TypeError, match="cannot meter"):
        metered(handle_request)(type("A", (), {}))
    with pytest.raises(TypeError, match='cannot meter a handler named "handle"'):
        metered(handle)(type("B", (), {}))


def test_each_of_many_metered_classes_calls_its_own_handler(worker):
    # Each class's method finds Gunicorn's handler on that class, by name.
    workers = []
    for i in range(80):
        def handle_request(self, req, i=i):
            return i

        def handle_http2_request(self, req, i=i):
            return -i

        base = type(f"Base{i}", (), {"handle_request": handle_request,
                                      "handle_http2_request": handle_http2_request})
        cls = metered(base.handle_request, base.handle_http2_request)(type(f"M{i}", (base,), {}))
        workers.append(cls())
    assert [w.handle_request(Req()) for w in workers] == list(range(80))
    assert [w.handle_http2_request(Req()) for w in workers] == [-i for i in range(80)]
