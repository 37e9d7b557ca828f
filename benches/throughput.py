"""Hello-world throughput with wrk on 127.0.0.1, 2 workers (sync, or gthread
with 4 threads): plain Gunicorn, this project, and the Python package
gunicorn-prometheus-exporter 0.2.4, in alternating rounds of the same run.

The three servers are started once and stay up; each round sends a short
burst of load to each in turn (plain next to this project in every round),
and the ratio to plain is taken within the round: the machine's speed drifts
by more than the few percent measured over minutes, but little within a few
seconds. The ratio reported is the median of the rounds' ratios, with its
quartiles.
Prints requests/s, ratios to plain, and the workers' resident memory; the last
line is the results as JSON."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("gunicorn exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not start")


WORKER_CLASSES = {
    # worker type -> (plain Gunicorn class, this project's and 0.2.4's class name)
    "sync": ("sync", "PrometheusWorker"),
    "gthread": ("gthread", "PrometheusThreadWorker"),
}


def worker_rss_bytes(master: int) -> float:
    """Mean resident set size of the master's workers."""
    pids = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    sizes = []
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes.append(float(line.split()[1]) * 1024)
    return statistics.mean(sizes)


class Server:
    """One Gunicorn master (2 workers) of a variant, started once for the run."""

    def __init__(self, name: str, python: str, worker_type: str) -> None:
        self.name = name
        self.port, metrics_port = free_port(), free_port()
        multiproc = tempfile.mkdtemp(prefix="gpe-bench-")
        env = {**os.environ, "PROMETHEUS_METRICS_PORT": str(metrics_port),
               "PROMETHEUS_MULTIPROC_DIR": multiproc, "PROMETHEUS_BIND_ADDRESS": "127.0.0.1",
               "GUNICORN_WORKERS": "2"}
        args = [python, "-m", "gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{self.port}",
                "--log-level", "warning", "--threads", "4" if worker_type == "gthread" else "1"]
        plain_class, exporter_class = WORKER_CLASSES[worker_type]
        if name == "plain":
            args += ["--worker-class", plain_class]
        else:
            args += ["--worker-class", f"gunicorn_prometheus_exporter.{exporter_class}"]
        if name == "pypi-0.2.4":
            args += ["--config", str(HERE / "conf_pypi_024.py")]
        args.append("hello:app")
        self.proc = subprocess.Popen(args, cwd=HERE, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def ready(self) -> None:
        wait_listening(self.port, self.proc)
        self.burst(1)  # warm-up

    def burst(self, seconds: int) -> float:
        """Requests per second over `seconds` of wrk."""
        out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s",
                              f"http://127.0.0.1:{self.port}/"],
                             capture_output=True, text=True, check=True).stdout
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if errors:
            raise RuntimeError(f"{self.name}: {errors.group(1)} failed responses")
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--this", required=True)
    ap.add_argument("--pypi024", required=True)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--duration", type=int, default=1, help="seconds of each burst")
    ap.add_argument("--worker-type", choices=list(WORKER_CLASSES), default="sync")
    a = ap.parse_args()
    variants = [("plain", a.this), ("this", a.this), ("pypi-0.2.4", a.pypi024)]
    servers: list[Server] = []
    try:
        for name, python in variants:
            servers.append(Server(name, python, a.worker_type))
        for server in servers:
            server.ready()
        time.sleep(1.0)
        rates: dict[str, list[float]] = {s.name: [] for s in servers}
        for r in range(a.rounds):
            for server in servers if r % 2 == 0 else list(reversed(servers)):
                rates[server.name].append(server.burst(a.duration))
        rss = {s.name: worker_rss_bytes(s.proc.pid) for s in servers}
    finally:
        for server in servers:
            server.stop()
    print(f"hello-world throughput, 2 {a.worker_type} workers, wrk -t1 -c8, {a.rounds} rounds "
          f"of {a.duration} s bursts; ratio: median of the rounds' ratios to plain")
    print(f"{'variant':<14}{'req/s':>10}{'ratio to plain':>16}{'quartiles':>16}"
          f"{'worker RSS MiB':>16}")
    results = {}
    for name, _ in variants:
        ratios = [v / p for v, p in zip(rates[name], rates["plain"])]
        ratio = statistics.median(ratios)
        low, _, high = statistics.quantiles(ratios, n=4)
        med = statistics.median(rates[name])
        mib = rss[name] / 2**20
        print(f"{name:<14}{med:>10.0f}{ratio:>16.3f}{f'{low:.3f}-{high:.3f}':>16}{mib:>16.1f}")
        results[name] = {"rps": med, "ratio": ratio, "quartiles": [low, high], "rss_mib": mib,
                         "rounds": rates[name], "round_ratios": ratios}
    print("RESULT " + json.dumps({"worker_type": a.worker_type, "variants": results}))


if __name__ == "__main__":
    main()
