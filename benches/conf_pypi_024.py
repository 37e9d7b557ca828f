"""Gunicorn configuration for the Python package gunicorn-prometheus-exporter 0.2.4,
as its documentation sets it up (hooks plus its worker class)."""

from gunicorn_prometheus_exporter.hooks import (
    default_on_exit,
    default_on_starting,
    default_post_fork,
    default_when_ready,
    default_worker_int,
)

on_starting = default_on_starting
post_fork = default_post_fork
when_ready = default_when_ready
worker_int = default_worker_int
on_exit = default_on_exit
