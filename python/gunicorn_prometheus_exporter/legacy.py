"""Settings of the older Python package of the same name (0.2.4), so that its
documented gunicorn.conf.py, YAML file and environment run unchanged.

What maps onto this package is applied (the metrics port, bind address and
directory keep their names; its TLS variables become a web config); what has
no meaning here (Redis storage, sidecar mode, cleanup switches) is accepted and
named in one warning line at start-up.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from typing import Any

log = logging.getLogger("gunicorn.error")

TRUE = ("1", "true", "yes", "on")

# 0.2.4 variable -> why it is ignored here (named when set to a value that asks for something).
IGNORED = {
    "REDIS_ENABLED": "REDIS_ENABLED (no Redis storage: metrics are kept in "
                     "PROMETHEUS_MULTIPROC_DIR)",
    "SIDECAR_MODE": "SIDECAR_MODE (set PROMETHEUS_METRICS_PORT=0 in the application's "
                    "container and run the gunicorn-prometheus-exporter command in the sidecar)",
    "CLEANUP_DB_FILES": "CLEANUP_DB_FILES (a dead worker's files are always folded and removed)",
    "PROMETHEUS_SSL_CLIENT_CAPATH": "PROMETHEUS_SSL_CLIENT_CAPATH (use "
                                    "PROMETHEUS_SSL_CLIENT_CAFILE or a web config file)",
}

# 0.2.4's YAML keys -> its environment variables (its config/loader.py).
YAML_PROMETHEUS = {"metrics_port": "PROMETHEUS_METRICS_PORT",
                   "bind_address": "PROMETHEUS_BIND_ADDRESS",
                   "multiproc_dir": "PROMETHEUS_MULTIPROC_DIR"}
YAML_SSL = {"certfile": "PROMETHEUS_SSL_CERTFILE", "keyfile": "PROMETHEUS_SSL_KEYFILE",
            "client_cafile": "PROMETHEUS_SSL_CLIENT_CAFILE",
            "client_capath": "PROMETHEUS_SSL_CLIENT_CAPATH",
            "client_auth_required": "PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED"}
YAML_GUNICORN = {"workers": "GUNICORN_WORKERS", "timeout": "GUNICORN_TIMEOUT",
                 "keepalive": "GUNICORN_KEEPALIVE"}
YAML_REDIS = {"host": "REDIS_HOST", "port": "REDIS_PORT", "db": "REDIS_DB",
              "key_prefix": "REDIS_KEY_PREFIX", "ttl_seconds": "REDIS_TTL_SECONDS",
              "password": "REDIS_PASSWORD"}


def load_yaml_config(config_file_path: str) -> None:
    """0.2.4's `load_yaml_config`: set the environment variables its YAML file
    names, each only where the environment does not set it already."""
    try:
        import yaml
    except ImportError:
        log.warning("gunicorn_prometheus_exporter: %s is not read (PyYAML is not installed); "
                    "set PROMETHEUS_METRICS_PORT, PROMETHEUS_BIND_ADDRESS and "
                    "PROMETHEUS_MULTIPROC_DIR instead", config_file_path)
        return
    with open(config_file_path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    exporter = data.get("exporter")
    if not isinstance(exporter, dict):
        raise ValueError(f"{config_file_path}: configuration must contain an 'exporter' section")
    for key, value in yaml_environment(exporter).items():
        os.environ.setdefault(key, value)


def yaml_environment(exporter: dict) -> dict[str, str]:
    env: dict[str, str] = {}

    def put(section: Any, mapping: dict[str, str]) -> None:
        for key, variable in mapping.items():
            if isinstance(section, dict) and section.get(key) is not None:
                value = section[key]
                env[variable] = str(value).lower() if isinstance(value, bool) else str(value)

    prometheus = exporter.get("prometheus") or {}
    put(prometheus, YAML_PROMETHEUS)
    ssl = prometheus.get("ssl") if isinstance(prometheus, dict) else None
    if isinstance(ssl, dict) and ssl.get("enabled"):
        put(ssl, YAML_SSL)
    put(exporter.get("gunicorn"), YAML_GUNICORN)
    redis = exporter.get("redis")
    if isinstance(redis, dict) and redis.get("enabled"):
        env["REDIS_ENABLED"] = "true"
        put(redis, YAML_REDIS)
    cleanup = exporter.get("cleanup")
    if isinstance(cleanup, dict) and cleanup.get("db_files") is not None:
        env["CLEANUP_DB_FILES"] = str(cleanup["db_files"]).lower()
    return env


def apply_environment(environ: MutableMapping[str, str], owner_pid: int) -> None:
    """Run in the master before the settings are read: translate 0.2.4's TLS
    variables into a web config file, and warn once about the rest."""
    ignored = [why for variable, why in IGNORED.items() if _asks_for(variable, environ)]
    cert, key = environ.get("PROMETHEUS_SSL_CERTFILE"), environ.get("PROMETHEUS_SSL_KEYFILE")
    if (cert or key) and not environ.get("PROMETHEUS_WEB_CONFIG_FILE"):
        if cert and key:
            environ["PROMETHEUS_WEB_CONFIG_FILE"] = _web_config_file(environ, cert, key,
                                                                     owner_pid)
        else:
            # Half a TLS configuration is an error, not a plain-text fallback.
            raise ValueError("PROMETHEUS_SSL_CERTFILE and PROMETHEUS_SSL_KEYFILE must be set "
                             "together")
    if ignored:
        log.warning("gunicorn_prometheus_exporter: ignoring settings of the 0.2.4 package "
                    "that do not apply here: %s; see MIGRATION in the README",
                    "; ".join(ignored))


def _asks_for(variable: str, environ: MutableMapping[str, str]) -> bool:
    value = environ.get(variable)
    if value is None or value == "":
        return False
    if variable == "CLEANUP_DB_FILES":
        return value.lower() not in TRUE  # turning cleanup off is what cannot be had
    if variable in ("REDIS_ENABLED", "SIDECAR_MODE"):
        return value.lower() in TRUE
    return True


def _web_config_file(environ: MutableMapping[str, str], cert: str, key: str,
                     owner_pid: int) -> str:
    # The web config resolves relative paths from its own directory; 0.2.4 from the cwd.
    tls: dict[str, str] = {"cert_file": os.path.abspath(cert), "key_file": os.path.abspath(key)}
    ca = environ.get("PROMETHEUS_SSL_CLIENT_CAFILE")
    if ca:
        tls["client_ca_file"] = os.path.abspath(ca)
        required = environ.get("PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED", "").lower() in TRUE
        tls["client_auth_type"] = "RequireAndVerifyClientCert" if required else \
            "VerifyClientCertIfGiven"
    directory = tempfile.mkdtemp(prefix="gunicorn-prometheus-web-")
    atexit.register(_remove, directory, owner_pid)
    path = os.path.join(directory, "web-config.yml")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"tls_server_config": tls}, f)  # JSON is YAML
    return path


def _remove(directory: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        shutil.rmtree(directory, ignore_errors=True)
