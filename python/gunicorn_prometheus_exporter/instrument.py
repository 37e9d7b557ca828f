"""The instrumentation every Prometheus worker class shares.

A WSGI worker class combines `MeteredWorker` with one of Gunicorn's workers
and has the core meter its `handle_request` (`metered`); the response is
counted where Gunicorn logs it (`log.access`, made to count by the core:
`WorkerMeter.watch_log`), so no Gunicorn code is copied. ASGI workers
wrap the application instead (`asgi.MeteredASGI`).
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable

from . import _core, framework_errors, routes, saturation, spans, timeouts
from .master import forget_inherited_files_at_fork, master

RESOURCE_SAMPLE_SECONDS = 1.0


class MeteredWorker:
    """Mixin for a Gunicorn worker class; list it before Gunicorn's class."""

    worker_id: int
    #: The master's settings and multiprocess directory, set before the fork.
    metrics_settings: _core.Settings
    metrics_directory: str
    meter: _core.WorkerMeter

    @classmethod
    def setup(cls) -> None:
        # Gunicorn calls it in the master as it loads the worker class, before
        # `--preload` imports the application: the directory must exist then.
        master().export_directory()
        super_setup = getattr(super(), "setup", None)
        if super_setup is not None:
            super_setup()

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        # Runs in the master at start-up: zero-configuration setup.
        master().setup(cfg)
        super_check = getattr(super(), "check_config", None)
        if super_check is not None:
            super_check(cfg, log)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Built in the master before the fork: take a slot there.
        state = master()
        state.setup(self.cfg)
        self.worker_id = state.assign_slot(self)
        # Parsed once, in the master; the forked worker meters with them.
        self.metrics_settings, self.metrics_directory = state.settings, state.directory

    def init_process(self) -> None:
        _core.close_inherited_metrics_sockets()  # an orphaned worker must not keep the port
        forget_inherited_files_at_fork()
        self.meter = _core.WorkerMeter(self.metrics_settings, self.metrics_directory,
                                       os.getpid(), self.worker_id, RESOURCE_SAMPLE_SECONDS)
        _core.meter_requests_with(self.meter)  # the metered handlers count on it
        self.meter.set_concurrency(saturation.concurrency(self))
        self.meter.set_kernel_wait(saturation.has_tcp_listener(self))
        self.log = self.meter.watch_log(self.log)
        note = "crashed"
        try:
            super().init_process()
            note = self.exit_note()
        except SystemExit as exc:
            if exc.code in (0, None):
                note = self.exit_note()
            raise
        finally:
            self.meter.note_exit(note)

    def exit_note(self) -> str:
        """Why this worker is leaving its loop normally: `max_requests`,
        `reload` (Gunicorn's --reload saw a file change) or `graceful` (a stop
        signal, or a reason only the master knows)."""
        if self.served_max_requests():
            return "max_requests"
        if self.cfg.reload and not self.alive and self.stop_signal is None:
            return "reload"  # the reloader thread cleared `alive`; no signal did
        return "graceful"

    def served_max_requests(self) -> bool:
        return self.nr >= self.max_requests

    # The stop signal this worker received, if any: Gunicorn's reloader stops
    # a worker the same way (`alive = False`) but without one.
    stop_signal: int | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.stop_signal = sig
        super().handle_exit(sig, frame)

    def handle_quit(self, sig: int, frame: Any) -> None:
        self.stop_signal = sig
        super().handle_quit(sig, frame)

    #: Whether the loaded application is a WSGI one (ASGI workers wrap theirs).
    serves_wsgi = True

    def load_wsgi(self) -> None:
        super().load_wsgi()  # type: ignore[misc]
        self.meter.set_flask_routes(routes.watch_frameworks())
        framework_errors.watch(self.meter)
        # An application that uses OpenTelemetry gives the exemplars of the
        # requests that come without a traceparent header (spans.py).
        watching = spans.watching()
        self.meter.set_span_exemplars(watching)
        if watching and self.serves_wsgi:
            self.wsgi = spans.SpanCapturingWSGI(self.wsgi)

    def handle_abort(self, sig: int, frame: Any) -> None:
        # The arbiter's timeout: count and show the request(s) it interrupted.
        try:
            timeouts.report(self, frame)
        except Exception:  # noqa: BLE001 - forensics must not stop the abort
            self.log.exception("could not report the timed-out request")
        super().handle_abort(sig, frame)  # type: ignore[misc]


def _unlogged_errors(handler: str) -> tuple[type[BaseException], ...] | None:
    """How Gunicorn answers when its handler `handler` raises. `handle_request`:
    with an error page that it logs (`handle_error`), whose status is counted
    then (None). An HTTP/2 stream: with a 500 it does not log, except for the
    errors of a stream or connection already gone (the classes returned)."""
    if handler != "handle_http2_request":
        return None
    try:
        from gunicorn.http2.errors import HTTP2ConnectionError, HTTP2StreamError
    except ImportError:
        return ()
    return (HTTP2StreamError, HTTP2ConnectionError)


def metered(*handlers: Callable[..., Any] | None) -> Callable[[type], type]:
    """Class decorator: the class's Gunicorn request `handlers` (functions of
    Gunicorn's worker class, `handle_request(self, ..., req, ...)`; None: the
    Gunicorn installed has no such handler) are metered by the core: it counts
    the request in flight while it runs, and any exception the application
    let out. Gunicorn's own `log.access` counts the response.

    The core's method calls Gunicorn's handler with the same arguments, with
    no Python frame of its own (`src/python/metered_handler.rs`)."""
    def meter(cls: type) -> type:
        for handle in handlers:
            if handle is None:
                continue
            params = list(inspect.signature(handle).parameters)[1:]
            if "req" not in params:
                raise TypeError(f"cannot meter {handle.__qualname__}{inspect.signature(handle)}")
            _core.meter_handler(cls, handle.__name__, handle, params.index("req"),
                                _unlogged_errors(handle.__name__))
            timeouts.watch(handle)
        return cls
    return meter
