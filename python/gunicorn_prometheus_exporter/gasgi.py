"""`PrometheusASGIWorker`: Gunicorn's own ASGI worker (newer Gunicorn), metered."""

import signal

try:
    from gunicorn.workers.gasgi import ASGIWorker
except ImportError as exc:
    raise ImportError(
        "PrometheusASGIWorker needs a Gunicorn with its own ASGI worker "
        "(gunicorn.workers.gasgi): pip install -U gunicorn"
    ) from exc

from .asgi import MeteredASGIWorker


class PrometheusASGIWorker(MeteredASGIWorker, ASGIWorker):
    app_attribute = "asgi"

    # This worker's signals reach the event loop's handlers, not handle_exit.
    def handle_exit_signal(self) -> None:
        self.stop_signal = signal.SIGTERM
        super().handle_exit_signal()

    def handle_quit_signal(self) -> None:
        self.stop_signal = signal.SIGQUIT
        super().handle_quit_signal()
