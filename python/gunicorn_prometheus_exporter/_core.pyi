"""Types of the compiled core (src/python.rs)."""

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

__version__: str

_Path = str | PathLike[str]

class WorkerMeter:
    def __init__(
        self,
        directory: _Path,
        pid: int,
        worker_id: int,
        prefix: str,
        duration_buckets: Sequence[float],
        sample_interval: float,
    ) -> None: ...
    def begin(self, req: Any) -> None: ...
    def end(self) -> None: ...
    def access(self, resp: Any, req: Any, environ: Any) -> None: ...
    def fail(self, req: Any, exc: BaseException) -> None: ...

class Settings:
    directory: str | None
    port: int
    bind_address: str
    duration_buckets: list[float]
    prefix: str
    @staticmethod
    def from_mapping(mapping: Mapping[str, str]) -> Settings: ...

class Exporter:
    host: str
    port: int

def start_exporter(
    directory: _Path,
    bind_address: str,
    port: int,
    prefix: str,
    build_info: Sequence[tuple[str, str]],
) -> Exporter: ...
def render_text(directory: _Path, prefix: str) -> bytes: ...
def prepare_directory(directory: _Path) -> None: ...
def mark_process_dead(directory: _Path, pid: int) -> None: ...
