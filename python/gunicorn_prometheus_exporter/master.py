"""The exporter's side of the Gunicorn master: settings, the multiprocess
directory, worker slots and the metrics server. Runs only in the master."""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import tempfile
from typing import Any, Callable

import gunicorn

from . import _core

DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class MasterExporter:
    """What one master process knows: one instance per master pid."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.settings: _core.Settings | None = None
        self.directory: str | None = None
        self.exporter: _core.Exporter | None = None
        # worker_id -> worker object (built in the master, then forked)
        self.slots: dict[int, Any] = {}
        self.exited: set[int] = set()

    def setup(self, cfg: Any) -> None:
        """Validate settings, prepare the directory, start the server (once)."""
        if self.settings is None:
            try:
                settings = _core.Settings.from_mapping(os.environ)
            except ValueError as exc:
                raise RuntimeError(str(exc)) from None
            directory = settings.directory
            if directory is None:
                directory = tempfile.mkdtemp(prefix="gunicorn-prometheus-")
                atexit.register(_remove_private_directory, directory, self.pid)
            try:
                _core.prepare_directory(directory)
            except OSError as exc:
                raise RuntimeError(str(exc)) from None
            os.environ[DIRECTORY_VARIABLE] = str(directory)
            self.directory = str(directory)
            self.settings = settings
            if settings.port != 0:
                try:
                    self.exporter = _core.start_exporter(
                        self.directory,
                        settings.bind_address,
                        settings.port,
                        settings.prefix,
                        _build_info(cfg),
                    )
                except OSError as exc:
                    raise RuntimeError(str(exc)) from None
        _chain_hook(cfg, "child_exit", self.child_exit)

    def assign_slot(self, worker: Any) -> int:
        """The lowest free worker_id: a replacement takes its predecessor's."""
        for holder in list(self.slots.values()):
            if isinstance(holder.pid, int) and not _alive(holder.pid):
                self.child_exit(None, holder)
        worker_id = 1
        while worker_id in self.slots:
            worker_id += 1
        self.slots[worker_id] = worker
        return worker_id

    def child_exit(self, server: Any, worker: Any) -> None:
        """A worker was reaped: free its slot, drop its live gauges."""
        pid = worker.pid
        if not isinstance(pid, int) or pid in self.exited:
            return
        self.exited.add(pid)
        worker_id = getattr(worker, "worker_id", None)
        if self.slots.get(worker_id) is worker:
            del self.slots[worker_id]
        if self.directory is not None:
            _core.mark_process_dead(self.directory, pid)


_master: MasterExporter | None = None


def master() -> MasterExporter:
    """This master's state; a forked or re-executed process starts afresh."""
    global _master
    if _master is None or _master.pid != os.getpid():
        _master = MasterExporter()
    return _master


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _build_info(cfg: Any) -> list[tuple[str, str]]:
    return [
        ("version", _core.__version__),
        ("gunicorn_version", gunicorn.__version__),
        ("python_version", platform.python_version()),
        ("worker_class", str(getattr(cfg, "worker_class_str", ""))),
    ]


def _chain_hook(cfg: Any, name: str, ours: Callable[[Any, Any], None]) -> None:
    """Run `ours` before the configured two-argument hook `name`, once."""
    current = cfg.settings[name].get()
    if getattr(current, "_prometheus_chained", False):
        return

    def chained(server: Any, worker: Any) -> None:
        ours(server, worker)
        current(server, worker)

    chained._prometheus_chained = True  # type: ignore[attr-defined]
    cfg.set(name, chained)


def _remove_private_directory(directory: str, owner_pid: int) -> None:
    # Workers inherit atexit handlers; only the master that made it removes it.
    if os.getpid() == owner_pid:
        shutil.rmtree(directory, ignore_errors=True)
