"""`python -m gunicorn_prometheus_exporter`: the standalone exporter, as the
`gunicorn-prometheus-exporter` command."""

from .cli import main

if __name__ == "__main__":
    main()
