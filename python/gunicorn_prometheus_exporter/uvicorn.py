"""`PrometheusUvicornWorker`: uvicorn's Gunicorn worker, metered.

Its base is `uvicorn_worker.UvicornWorker` (the `uvicorn-worker` package) when
that is installed, else uvicorn's own, deprecated `uvicorn.workers.UvicornWorker`.

uvicorn's worker stops in its own way, which Gunicorn's exit bookkeeping does
not see: it counts max-requests itself, and after a graceful shutdown it raises
the stop signal again to die of it. So this class leaves its exit note from a
handler of that signal, and makes Gunicorn's --reload stop it (uvicorn ignores
the `alive` flag that Gunicorn's reloader clears).
"""

from __future__ import annotations

import os
import signal
import warnings
from typing import Any

from .optional import missing

try:
    from uvicorn_worker import UvicornWorker
except ImportError as first:
    try:
        with warnings.catch_warnings():
            # uvicorn.workers warns that it is deprecated; say it in the docs,
            # not as an exception under `python -W error`.
            warnings.simplefilter("ignore", DeprecationWarning)
            from uvicorn.workers import UvicornWorker
    except ImportError as exc:
        raise missing("PrometheusUvicornWorker", first,
                      {"uvicorn_worker": "uvicorn-worker", "uvicorn": "uvicorn"}) from exc

from .asgi import MeteredASGIWorker

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PrometheusUvicornWorker(MeteredASGIWorker, UvicornWorker):
    reload_requested = False

    def init_signals(self) -> None:
        super().init_signals()
        # uvicorn takes these over while it serves and hands them back to us
        # after its graceful shutdown, by raising the signal again.
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._leave_on_signal)

    def _leave_on_signal(self, sig: int, frame: Any) -> None:
        if not self.reload_requested:
            self.stop_signal = sig
        try:
            self.meter.note_exit(self.exit_note())
        finally:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)  # exit as uvicorn meant to

    def exit_note(self) -> str:
        if self.reload_requested:
            return "reload"
        return super().exit_note()

    def served_max_requests(self) -> bool:
        # uvicorn counts the requests (Gunicorn's `nr` stays 0): count the same.
        return getattr(self.wsgi, "responses", 0) >= self.max_requests

    @property
    def alive(self) -> bool:
        return self.__dict__.get("alive", True)

    @alive.setter
    def alive(self, value: bool) -> None:
        # Only Gunicorn's reloader clears `alive` in this worker (uvicorn's own
        # signal handling replaces Gunicorn's): stop uvicorn as TERM would.
        self.__dict__["alive"] = value
        if not value and self.cfg.reload and self.pid == os.getpid():
            self.reload_requested = True
            os.kill(os.getpid(), signal.SIGTERM)
