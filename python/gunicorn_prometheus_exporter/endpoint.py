"""The metrics endpoint's URL, as the master and the standalone exporter log
it at start."""

from __future__ import annotations

import json
import re


def metrics_url(host: str, port: int, web_config_file: str | None) -> str:
    """The URL of the metrics endpoint, as a log line shows it."""
    scheme = "https" if _serves_tls(web_config_file) else "http"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}/metrics"


def _serves_tls(web_config_file: str | None) -> bool:
    """Whether a web config file, which the core has loaded already, has a
    `tls_server_config`: JSON (as `legacy` writes it) or block-style YAML."""
    if not web_config_file:
        return False
    try:
        with open(web_config_file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, ValueError):
        return False
    try:
        data = json.loads(text)
    except ValueError:
        pass
    else:
        return isinstance(data, dict) and data.get("tls_server_config") is not None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for i, line in enumerate(lines):
        key = re.match(r"""\{?\s*["']?tls_server_config["']?\s*:\s*(.*)""", line)
        if key is None:
            continue
        value = re.sub(r"\s+#.*", "", key.group(1)).strip()
        if value:
            return value not in ("null", "Null", "NULL", "~")
        # An empty value is null unless an indented block follows.
        return i + 1 < len(lines) and lines[i + 1][:1] in (" ", "\t")
    return False
