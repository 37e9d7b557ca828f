"""`PrometheusEventletWorker`: Gunicorn's eventlet worker (Gunicorn < 27), metered."""

from .optional import missing

try:
    from gunicorn.workers.geventlet import EventletWorker
except (ImportError, RuntimeError) as exc:  # Gunicorn raises RuntimeError for a missing eventlet
    if isinstance(exc, ModuleNotFoundError) and exc.name == "gunicorn.workers.geventlet":
        raise ImportError("PrometheusEventletWorker needs a Gunicorn with an eventlet worker "
                          "(Gunicorn 27 has none): use PrometheusGeventWorker") from exc
    raise missing("PrometheusEventletWorker", exc, {"eventlet": "eventlet"}) from exc

from .instrument import MeteredWorker, metered


@metered(EventletWorker.handle_request)
class PrometheusEventletWorker(MeteredWorker, EventletWorker):
    pass
