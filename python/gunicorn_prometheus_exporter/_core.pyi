"""Types of the compiled core (src/python/)."""

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any, final

__all__ = [
    "ArchiveCompactor",
    "CountedAccess",
    "Exporter",
    "MasterMeter",
    "meter_requests_with",
    "MeteredLog",
    "Settings",
    "UnmeteredHandler",
    "WorkerMeter",
    "__version__",
    "close_inherited_metrics_sockets",
    "exclude_request",
    "forget_inherited_files",
    "meter_handler",
    "directory_owner",
    "prepare_directory",
    "start_exporter",
]

__version__: str

_Path = str | PathLike[str]

@final
class WorkerMeter:
    def __new__(
        cls,
        settings: Settings,
        directory: _Path,
        pid: int,
        worker_id: int,
        sample_interval: float,
    ) -> WorkerMeter: ...
    def wsgi_started(self, req: Any, /) -> None: ...
    def asgi_started(self) -> int: ...
    def asgi_answered(self, started: int, scope: Any, status: int, sent: int) -> None: ...
    def watch_log(self, log: Any) -> Any: ...
    def asgi_left(self) -> None: ...
    def application_failed(self, request: Mapping[str, Any], exc: BaseException,
                           route: str | None = None) -> None: ...
    def request_failed(self, req: Any, exc: BaseException) -> None: ...
    def request_timed_out(self, req: Any, environ: Any = None) -> None: ...
    def note_exit(self, reason: str) -> bool: ...
    def set_concurrency(self, requests: int) -> None: ...
    def set_kernel_wait(self, on: bool) -> None: ...
    def set_span_exemplars(self, on: bool) -> None: ...
    def set_flask_routes(self, on: bool) -> None: ...

@final
class MeteredLog:
    """Gunicorn's logger (every attribute), with `access` also counting the
    response: what `WorkerMeter.watch_log`
    returns for a logger whose own `access` cannot be replaced."""
    def access(self, resp: Any, req: Any, environ: Any, request_time: Any, /) -> None: ...

@final
class CountedAccess:
    """A logger's own `access`, counted first (`WorkerMeter.watch_log`)."""

@final
class UnmeteredHandler:
    """Gunicorn's request handler, kept on the class `meter_handler` metered."""

def meter_handler(cls: type, name: str, handle: Any, req_index: int,
                  unlogged_errors: tuple[type[BaseException], ...] | None = None) -> None: ...

def exclude_request(request: dict[str, Any]) -> None:
    """Marks the request of a WSGI environ or ASGI scope as not counted."""

def meter_requests_with(meter: WorkerMeter | None) -> None:
    """The metered handlers of this process count on `meter` from now on."""

@final
class Settings:
    """The validated environment (or flags), parsed once by the core and
    handed back to it whole."""
    @property
    def directory(self) -> PathLike[str] | None: ...
    @property
    def port(self) -> int: ...
    @staticmethod
    def from_mapping(mapping: Mapping[str, str]) -> Settings: ...

@final
class Exporter:
    host: str
    port: int
    def set_listeners(self, listeners: Sequence[tuple[str, int]]) -> None: ...
    def set_bound_listeners(self, listeners: Sequence[tuple[str, str, int]]) -> None: ...
    def listener_fd(self) -> int: ...
    def inherit_listener(self) -> int:
        """Clear close-on-exec on the listening socket (USR2's child); its fd."""

@final
class MasterMeter:
    def __new__(
        cls,
        settings: Settings,
        directory: _Path,
        pid: int,
        compactor: ArchiveCompactor | None = None,
    ) -> MasterMeter: ...
    def restart(self, reason: str) -> None: ...
    def signal(self, name: str) -> bool: ...
    def set_desired(self, workers: int) -> None: ...

@final
class ArchiveCompactor:
    def __init__(self) -> None: ...
    def retire(self, directory: _Path, pid: int) -> str | None: ...
    def deferred(self) -> int: ...
    def cap_label_values(self, settings: Settings) -> None: ...

def start_exporter(
    settings: Settings,
    directory: _Path,
    build_info: Sequence[tuple[str, str]],
    created: float | None = None,
    inherited_fd: int | None = None,
) -> Exporter: ...
def prepare_directory(
    directory: _Path, compactor: ArchiveCompactor | None = None, private: bool = False
) -> int | None:
    """Take the directory over; the old master's pid on a USR2 upgrade, else None."""
def directory_owner(uid: int, gid: int) -> None:
    """The directory, if made again, is given to this user and group."""
def close_inherited_metrics_sockets() -> int: ...
def forget_inherited_files() -> tuple[int, int]: ...
