"""The exporter's side of the Gunicorn master: settings, the multiprocess
directory, worker slots, restarts, signals and the metrics server.

Everything here uses Gunicorn's public extension points: the worker class's
`check_config`, server hooks (chained in front of the configured ones), the
attributes hooks receive, and `signal.signal` to count signals before handing
them to the arbiter's own handler.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Any, Callable

import gunicorn

from . import _core, legacy
from .endpoint import metrics_url

DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Handed by an old master to the one Gunicorn's USR2 execs (then removed from
# the new master's environment): the metrics listening socket's fd, the
# private directory it made (so that the new master removes it at its exit),
# and when the directory's counters started.
LISTENER_VARIABLE = "GUNICORN_PROMETHEUS_FD"
PRIVATE_DIRECTORY_VARIABLE = "GUNICORN_PROMETHEUS_PRIVATE_DIR"
CREATED_VARIABLE = "GUNICORN_PROMETHEUS_CREATED"
COUNTED_SIGNALS = ("hup", "ttin", "ttou", "usr1", "usr2", "winch", "int", "term", "quit")
STOPPING_SIGNALS = ("int", "term", "quit")

log = logging.getLogger("gunicorn.error")


class MasterExporter:
    """What one master process knows: one instance per master pid."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.settings: _core.Settings | None = None
        self.directory: str | None = None
        # The directory was made by this master (zero-config): it goes with it.
        self.private = False
        # This master made the directory (then gives it to --user/--group).
        self.made = False
        self.removed_at_exit = False
        # The directory taken and exported before Gunicorn imported the
        # application (`export_directory`), until `_start` adopts it.
        self.early_directory: str | None = None
        self.created: float | None = None
        # The old master's pid when this one took the directory over by USR2.
        self.upgraded_from: int | None = None
        self.exporter: _core.Exporter | None = None
        self.meter: _core.MasterMeter | None = None
        self.compactor = _core.ArchiveCompactor()
        self.server: Any = None  # the arbiter, once when_ready ran
        # worker_id -> worker object (built in the master, then forked)
        self.slots: dict[int, Any] = {}
        # pids the master is about to stop on purpose, and why
        self.reloading: set[int] = set()
        self.scaling_down: set[int] = set()
        self.stopping = False

    def setup(self, cfg: Any) -> None:
        """Validate settings, prepare the directory, start the server (once),
        and put our hooks in front of the configured ones (again after a reload
        replaced the configuration)."""
        if self.settings is None:
            self._start(cfg)
        _chain_hook(cfg, "when_ready", self.when_ready)
        _chain_hook(cfg, "nworkers_changed", self.nworkers_changed)
        _chain_hook(cfg, "child_exit", self.child_exit)
        _chain_hook(cfg, "pre_exec", self.pre_exec)
        # A reload (HUP) resets the arbiter's number of workers to the new
        # configuration's before our hooks are chained into it: read it here,
        # where the reloaded arbiter builds its first worker.
        if self.server is not None and self.meter is not None:
            self.meter.set_desired(self.server.num_workers)
        self._publish_listeners()

    def export_directory(self) -> None:
        """Take the directory (a private one when none is named) and export it
        before Gunicorn imports the application: `--preload` imports it in the
        master before any hook or `check_config` runs, and prometheus_client
        writes where the variable said when it was imported. The settings are
        read later, in `_start`: Gunicorn applies its `--env` after this."""
        if self.settings is None and self.early_directory is None:
            named = os.environ.get(DIRECTORY_VARIABLE, "").strip() or None
            self.early_directory = self._take_directory(named)

    def _take_directory(self, named: str | None) -> str:
        """Make the directory (private when `named` is None), take it over for
        this master and export it."""
        self.private = named is None
        directory = named or tempfile.mkdtemp(prefix="gunicorn-prometheus-")
        self.made = self.private or not os.path.exists(directory)
        if self.private:
            _warn_if_prometheus_client_was_imported()
        try:
            self.upgraded_from = _core.prepare_directory(directory, self.compactor,
                                                         private=self.private)
        except OSError as exc:
            if self.private:
                shutil.rmtree(directory, ignore_errors=True)
            raise RuntimeError(str(exc)) from None
        if self.private:
            self._remove_at_exit()
        self.directory = directory
        os.environ[DIRECTORY_VARIABLE] = directory
        return directory

    def _start(self, cfg: Any) -> None:
        started = time.time()
        # From an old master (USR2): never left for our workers or our own re-exec.
        handed = {name: os.environ.pop(name, None)
                  for name in (LISTENER_VARIABLE, PRIVATE_DIRECTORY_VARIABLE, CREATED_VARIABLE)}
        try:
            legacy.apply_environment(os.environ, self.pid)
            settings = _core.Settings.from_mapping(os.environ)
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from None
        self.compactor.cap_label_values(settings)
        named = None if settings.directory is None else str(settings.directory)
        early, self.early_directory = self.early_directory, None
        if early is None or (named is not None and named != early):
            if early is not None and self.private:  # Gunicorn's --env named another one
                shutil.rmtree(early, ignore_errors=True)
            self._take_directory(named)
        directory = str(self.directory)
        try:
            _give_to_workers(directory, cfg, chown=self.made)
        except OSError as exc:
            if self.private:
                shutil.rmtree(directory, ignore_errors=True)
            raise RuntimeError(str(exc)) from None
        if self.upgraded_from is not None:
            # The old master's private directory is ours to remove now.
            self.private = handed[PRIVATE_DIRECTORY_VARIABLE] == str(directory)
            started = _float_or(handed[CREATED_VARIABLE], started)
        if self.private:
            self._remove_at_exit()
        self.meter = _core.MasterMeter(settings, directory, self.pid, self.compactor)
        forget_inherited_files_at_fork()
        self.settings = settings
        self.created = started
        if settings.port != 0:
            try:
                self.exporter = _core.start_exporter(
                    settings,
                    self.directory,
                    build_info(str(getattr(cfg, "worker_class_str", ""))),
                    created=started,  # the directory's counters start from zero now
                    inherited_fd=_int_or_none(handed[LISTENER_VARIABLE]),
                )
            except (OSError, ValueError) as exc:
                raise RuntimeError(str(exc)) from None
            log.info("gunicorn_prometheus_exporter: serving metrics at %s",
                     metrics_url(self.exporter.host, self.exporter.port,
                                 os.environ.get("PROMETHEUS_WEB_CONFIG_FILE")))
        else:
            log.info("gunicorn_prometheus_exporter: not serving metrics "
                     "(PROMETHEUS_METRICS_PORT=0); serve %s with the "
                     "gunicorn-prometheus-exporter command", self.directory)

    def pre_exec(self, server: Any) -> None:
        """Gunicorn's USR2, in the child about to exec the new master with the
        original environment: hand it the directory and the metrics socket."""
        if self.directory is None:
            return
        environ = server.cfg.env_orig  # this child's copy: it execs next
        for name in (LISTENER_VARIABLE, PRIVATE_DIRECTORY_VARIABLE, CREATED_VARIABLE):
            environ.pop(name, None)  # what our own old master handed us
        environ[DIRECTORY_VARIABLE] = self.directory
        if self.private:
            environ[PRIVATE_DIRECTORY_VARIABLE] = self.directory
        if self.created is not None:
            environ[CREATED_VARIABLE] = repr(self.created)
        if self.exporter is not None:
            environ[LISTENER_VARIABLE] = str(self.exporter.inherit_listener())

    def _remove_at_exit(self) -> None:
        if not self.removed_at_exit:
            self.removed_at_exit = True
            atexit.register(self._remove_private_directory)

    def _remove_private_directory(self) -> None:
        # Workers inherit atexit handlers; only this master removes it, and
        # not while a USR2 successor that took it over lives.
        if not self.private or os.getpid() != self.pid or self._successor_alive():
            return
        shutil.rmtree(str(self.directory), ignore_errors=True)

    def _successor_alive(self) -> bool:
        successor = getattr(self.server, "reexec_pid", 0)
        if not isinstance(successor, int) or successor <= 0:
            return False
        try:
            done, _ = os.waitpid(successor, os.WNOHANG)  # a zombie is not alive
        except ChildProcessError:
            return _alive(successor)
        return done == 0

    def when_ready(self, server: Any) -> None:
        self.server = server
        if self.meter is not None:
            self.meter.set_desired(server.num_workers)
        self._publish_listeners()
        _count_signals(self.on_signal)

    def on_signal(self, name: str) -> None:
        """Runs in the master's signal handler, before the arbiter queues it."""
        if self.meter is not None:
            self.meter.signal(name)
        if name in STOPPING_SIGNALS:
            self.stopping = True
        elif name == "hup" and self.server is not None:
            self.reloading.update(self.server.WORKERS)

    def nworkers_changed(self, server: Any, new_value: int, old_value: int | None) -> None:
        if self.meter is not None:
            self.meter.set_desired(new_value)
        # The arbiter stops the oldest workers beyond the new number.
        by_age = sorted(server.WORKERS.items(), key=lambda item: item[1].age)
        excess = len(by_age) - new_value
        if excess > 0:
            self.scaling_down.update(pid for pid, _ in by_age[:excess])

    def assign_slot(self, worker: Any) -> int:
        """The lowest free worker_id: a replacement takes its predecessor's."""
        for holder in list(self.slots.values()):
            if isinstance(holder.pid, int) and not _alive(holder.pid):
                self.child_exit(self.server, holder)
        worker_id = 1
        while worker_id in self.slots:
            worker_id += 1
        self.slots[worker_id] = worker
        return worker_id

    def child_exit(self, server: Any, worker: Any) -> None:
        """A worker was reaped: free its slot, fold its files, count the restart."""
        pid = worker.pid
        if not isinstance(pid, int) or getattr(worker, "_prometheus_retired", False):
            return
        worker._prometheus_retired = True
        worker_id = getattr(worker, "worker_id", None)
        if self.slots.get(worker_id) is worker:
            del self.slots[worker_id]
        if self.directory is None or self.meter is None:
            return
        try:
            note = self.compactor.retire(self.directory, pid)
        except OSError as exc:  # counted by the core; one line, never a traceback per exit
            note = None
            _warn_once("retire", "gunicorn_prometheus_exporter: cannot fold the files of "
                       "exited workers (%s); they are retried", exc)
        reason = self._restart_reason(worker, pid, note)
        self.reloading.discard(pid)
        self.scaling_down.discard(pid)
        if reason is not None:
            self.meter.restart(reason)

    def _restart_reason(self, worker: Any, pid: int, note: str | None) -> str | None:
        if getattr(worker, "aborted", False):
            return "timeout"  # the arbiter aborts a worker that missed its timeout
        if note == "max_requests":
            return "max_requests"
        if note == "crashed":
            return "crashed"
        if note == "reload":  # Gunicorn's --reload saw a file change
            if pid in self.scaling_down:
                return "scale_down"
            return None if self.stopping else "reload"
        if note == "graceful":
            if pid in self.reloading:
                return "reload"
            if pid in self.scaling_down:
                return "scale_down"
            if self.stopping:
                return None  # shutting down: not a restart
        # No note: ended by a signal it could not handle (SIGKILL, the OOM
        # killer) or by one nobody in the master sent.
        return "killed"

    def _publish_listeners(self) -> None:
        if self.exporter is not None and self.server is not None:
            listeners = getattr(self.server, "LISTENERS", [])
            self.exporter.set_listeners([(str(lnr), lnr.fileno()) for lnr in listeners])
            # With --reuse-port, Gunicorn >= 24 binds one socket in each worker
            # and none in the master: those are read by address.
            cfg = self.server.cfg
            bound = [] if listeners or not getattr(cfg, "reuse_port", False) else \
                _bound_listeners(cfg)
            try:
                self.exporter.set_bound_listeners(bound)
            except ValueError:
                log.exception("gunicorn_prometheus_exporter: no listen backlog for %s", bound)


_master: MasterExporter | None = None
_forgets_at_fork = False


def forget_inherited_files_at_fork() -> None:
    """Every process forked from this one (a worker from the master, a child
    an application forks in a request) closes the files its parent's scrapes
    hold open and writes nothing into its parent's files. Registered once: a
    forked process inherits the registration."""
    global _forgets_at_fork
    if not _forgets_at_fork:
        os.register_at_fork(after_in_child=_core.forget_inherited_files)
        _forgets_at_fork = True


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


def build_info(worker_class: str) -> list[tuple[str, str]]:
    return [
        ("version", _core.__version__),
        ("gunicorn_version", gunicorn.__version__),
        ("python_version", platform.python_version()),
        ("worker_class", worker_class),
    ]


def _warn_if_prometheus_client_was_imported() -> None:
    """prometheus_client chooses where its values live when it is imported:
    imported before the directory was exported, it keeps the application's
    metrics in each process, unserved."""
    if "prometheus_client.values" in sys.modules:
        log.warning("gunicorn_prometheus_exporter: prometheus_client was imported before %s "
                    "was set (by the configuration file, or by --preload with the hooks "
                    "alone): the application's own metrics are not served; set %s, or use a "
                    "Prometheus worker class (--worker-class "
                    "gunicorn_prometheus_exporter.PrometheusWorker), which sets it before "
                    "--preload imports the application", DIRECTORY_VARIABLE,
                    DIRECTORY_VARIABLE)


def _bound_listeners(cfg: Any) -> list[tuple[str, str, int]]:
    """(name as Gunicorn prints its listener, "host:port", effective backlog)
    of each TCP address Gunicorn binds."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            backlog = min(cfg.backlog, int(f.read()))  # the kernel caps listen()'s backlog
    except (OSError, ValueError):
        backlog = cfg.backlog
    scheme = "https" if cfg.is_ssl else "http"
    out = []
    for address in cfg.address:
        if not isinstance(address, tuple):
            continue  # a unix socket: each worker's own is not reachable from here
        host, port = address[0], address[1]
        if ":" not in host:
            try:
                host = socket.gethostbyname(host)  # as bind() resolves it for AF_INET
            except OSError:
                continue
        shown = f"[{host}]" if ":" in host else host
        out.append((f"{scheme}://{shown}:{port}", f"{shown}:{port}", backlog))
    return out


def _chain_hook(cfg: Any, name: str, ours: Callable[..., None]) -> None:
    """Run `ours` before the configured hook `name` (same arity), once per config.
    A failure of ours is logged, never raised into the arbiter."""
    current = cfg.settings[name].get()
    if getattr(current, "_prometheus_chained", False):
        return

    def call(*args: Any) -> Any:
        try:
            ours(*args)
        except Exception:
            log.exception("gunicorn_prometheus_exporter: %s hook failed", name)
        return current(*args)

    # Gunicorn checks a hook's arity, so the wrapper spells its arguments out.
    arity = len(inspect.signature(ours).parameters)
    chained = {1: lambda a: call(a), 2: lambda a, b: call(a, b), 3: lambda a, b, c: call(a, b, c)}[
        arity
    ]
    chained._prometheus_chained = True  # type: ignore[attr-defined]
    cfg.set(name, chained)


def _count_signals(count: Callable[[str], None]) -> None:
    """Count each master signal, then hand it to the handler the arbiter installed."""
    master_pid = os.getpid()
    for name in COUNTED_SIGNALS:
        signum = getattr(signal, "SIG" + name.upper())
        current = signal.getsignal(signum)
        if not callable(current) or getattr(current, "_prometheus_counted", False):
            continue

        def handler(sig: int, frame: Any, _current: Any = current, _name: str = name) -> Any:
            # A worker runs this inherited handler until it installs its own.
            if os.getpid() == master_pid:
                count(_name)
            return _current(sig, frame)

        handler._prometheus_counted = True  # type: ignore[attr-defined]
        signal.signal(signum, handler)


def _give_to_workers(directory: str, cfg: Any, chown: bool) -> None:
    """Workers that drop privileges (`--user`/`--group`) must write in the
    directory the master made (`chown`): their exit notes, the application's
    own prometheus_client files; so in the directory made again if someone
    removes it."""
    uid, gid = getattr(cfg, "uid", None), getattr(cfg, "gid", None)
    if os.geteuid() == 0 and isinstance(uid, int) and isinstance(gid, int) and (uid, gid) != (0, 0):
        _core.directory_owner(uid, gid)
        if chown:
            os.chown(directory, uid, gid)


_warned: set[tuple[int, str]] = set()


def _warn_once(kind: str, message: str, *args: Any) -> None:
    """One warning line of this kind per process."""
    if (os.getpid(), kind) not in _warned:
        _warned.add((os.getpid(), kind))
        log.warning(message, *args)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float_or(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default
