"""Clear ImportErrors for worker classes whose base needs an optional package."""

from __future__ import annotations

import importlib.util


def missing(worker: str, exc: BaseException, packages: dict[str, str]) -> ImportError:
    """An ImportError for `worker` that names what is really missing.

    `packages` maps the modules the base class needs to the pip package that
    brings each. The import can also fail on a module that one of them (or
    Gunicorn) imports in turn, such as `packaging`, which Gunicorn's gevent
    worker needs from Gunicorn 26.2 on: that module is named then, not the
    installed package."""
    cause = exc if isinstance(exc, ModuleNotFoundError) else exc.__context__
    name = cause.name if isinstance(cause, ModuleNotFoundError) else None
    if name and name.partition(".")[0] not in packages:
        return ImportError(f"{worker} needs the module {name!r}, which is not installed "
                           f"({cause}): pip install {name}")
    absent = [pkg for module, pkg in packages.items() if not _importable(module)]
    if absent:
        return ImportError(f"{worker} needs {' or '.join(absent)} ({exc}): "
                           f"pip install {absent[0]}")
    # Everything is installed: a version Gunicorn does not accept, or a broken install.
    return ImportError(f"{worker} cannot load its base class ({exc}): "
                       f"pip install -U {' '.join(packages.values())}")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
