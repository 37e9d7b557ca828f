"""`gunicorn-prometheus-exporter`: serve an existing multiprocess directory from
another process or container (the sidecar pattern)."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from . import _core
from .endpoint import metrics_url
from .master import build_info

# flag -> environment variable; a flag wins over its variable.
FLAGS = {
    "--multiproc-dir": "PROMETHEUS_MULTIPROC_DIR",
    "--port": "PROMETHEUS_METRICS_PORT",
    "--bind-address": "PROMETHEUS_BIND_ADDRESS",
    "--web-config-file": "PROMETHEUS_WEB_CONFIG_FILE",
    "--prefix": "PROMETHEUS_METRICS_PREFIX",
}

HELP = {
    "--multiproc-dir": "the directory the Gunicorn master and its workers write (required)",
    "--port": "metrics port (default 9091)",
    "--bind-address": "metrics bind address (default 127.0.0.1)",
    "--web-config-file": "exporter-toolkit web config: TLS and basic auth",
    "--prefix": "prefix of the exporter's metric names (default gunicorn)",
}


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, dict[str, str]]:
    parser = argparse.ArgumentParser(
        prog="gunicorn-prometheus-exporter",
        description="Serve the Prometheus metrics of a Gunicorn multiprocess directory.",
        epilog="Each flag can also be set with the environment variable named in brackets.",
    )
    for flag, variable in FLAGS.items():
        parser.add_argument(flag, metavar=variable, help=f"{HELP[flag]} [{variable}]")
    args = vars(parser.parse_args(argv))
    settings = {k: v for k, v in os.environ.items() if k in FLAGS.values()}
    for flag, variable in FLAGS.items():
        value = args[flag.lstrip("-").replace("-", "_")]
        if value is not None:
            settings[variable] = value
    return parser, settings


def main(argv: list[str] | None = None) -> None:
    parser, mapping = parse_args(argv)
    try:
        settings = _core.Settings.from_mapping(mapping)
    except ValueError as exc:
        parser.error(str(exc))
    directory = settings.directory
    if directory is None:
        parser.error("--multiproc-dir (PROMETHEUS_MULTIPROC_DIR) is required")
    if not os.path.isdir(directory):
        parser.error(f"--multiproc-dir (PROMETHEUS_MULTIPROC_DIR) {str(directory)!r} is not a "
                     "directory")
    if settings.port == 0:
        parser.error("--port (PROMETHEUS_METRICS_PORT) 0 would serve nothing")
    # Block the stop signals before the server thread starts, so that only
    # this thread receives them.
    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        exporter = _core.start_exporter(settings, directory, build_info("standalone"))
    except (OSError, ValueError) as exc:
        print(f"gunicorn-prometheus-exporter: error: {exc}", file=sys.stderr)
        sys.exit(1)
    url = metrics_url(exporter.host, exporter.port, mapping.get("PROMETHEUS_WEB_CONFIG_FILE"))
    print(f"gunicorn-prometheus-exporter: serving {directory} at {url}", flush=True)
    signal.sigwait(stop)


if __name__ == "__main__":
    main()
