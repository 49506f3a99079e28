"""A folder of runs: sortable run names, and which run of a folder is the newest.

Give the recorder a folder (``path="runs/"``) and every run gets a new name that
sorts by time, ``runs/2026-11-29_231500.tp``, with ``_2``, ``_3``, ... added when
a name is taken (two runs in the same second). Give a reader the folder (``tp.open_run``,
the CLI, the report) and it takes the newest run in it.

Design constraints:

* Torch-free and light: readers, the CLI and the dashboard import this module.
* The newest run is the one whose twinpeaks name holds the latest time (and the
  highest ``_N`` in that second); a file named otherwise counts by the time it
  was last modified. A new name always sorts after every twinpeaks name already
  in the folder, even if the clock went back, so "newest" is "made last".
* Claiming a name is race-free between processes: the file is created with
  ``O_EXCL``, and a name someone else took first is skipped.
* Only the folder's own files count (not sub-folders), hidden files and
  folders named ``*.tp`` are skipped.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

from .errors import RunFileError

RUN_SUFFIX = ".tp"
#: ``strftime`` format of a run name's time (local time, to the second).
TIME_FORMAT = "%Y-%m-%d_%H%M%S"
_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2}_\d{6})(?:_([1-9]\d{0,8}))?\.tp$")


def names_a_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` means a folder of runs: it is a folder, or it ends with ``/`` (or ``os.sep``).

    Example:
        >>> names_a_folder("runs/"), names_a_folder("runs/exp1.tp")
        (True, False)
    """
    text = os.fspath(path)
    seps = tuple(s for s in ("/", os.sep, os.altsep) if s)
    return text.endswith(seps) or Path(text).is_dir()


def run_name(when: datetime, n: int = 1) -> str:
    """The run name of ``when`` (to the second); ``n > 1`` adds ``_n``.

    Example:
        >>> run_name(datetime(2026, 11, 29, 23, 15)), run_name(datetime(2026, 11, 29, 23, 15), 2)
        ('2026-11-29_231500.tp', '2026-11-29_231500_2.tp')
    """
    return when.strftime(TIME_FORMAT) + (f"_{n}" if n > 1 else "") + RUN_SUFFIX


def parse_run_name(name: str) -> tuple[datetime, int] | None:
    """``(time, n)`` of a twinpeaks run name, None for any other name."""
    m = _NAME.match(name)
    if m is None:
        return None
    try:
        return datetime.strptime(m[1], TIME_FORMAT), int(m[2] or 1)
    except ValueError:  # 2026-13-45_...: shaped like a name, not a time
        return None


def run_sort_key(path: Path) -> tuple[float, int, str]:
    """Sorts runs oldest first: the time in a twinpeaks name (then ``_N``), else the file's modification time."""
    parsed = parse_run_name(path.name)
    if parsed is not None:
        when, n = parsed
        try:
            return when.timestamp(), n, path.name
        except (OverflowError, OSError, ValueError):
            pass
    try:
        return path.stat().st_mtime, 0, path.name
    except OSError:
        return float("-inf"), 0, path.name


def list_runs(folder: str | os.PathLike) -> list[Path]:
    """The run files (``*.tp``) directly in ``folder``, oldest first (see the module's rule).

    Example:
        >>> [p.name for p in list_runs("runs")]  # doctest: +SKIP
        ['2026-11-29_231500.tp', '2026-11-29_231500_2.tp', '2026-11-30_090000.tp']
    """
    d = Path(folder)
    if not d.is_dir():
        raise RunFileError(f"{str(folder)!r} is not a folder of runs")
    found = []
    for entry in os.scandir(d):
        if entry.name.startswith(".") or not entry.name.endswith(RUN_SUFFIX):
            continue
        try:
            if not entry.is_file():  # follows symlinks: a link to a run file counts
                continue
        except OSError:
            continue
        found.append(Path(entry.path))
    return sorted(found, key=run_sort_key)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def newest_run(folder: str | os.PathLike) -> Path:
    """The newest run file directly in ``folder``.

    Empty files are passed over: a name claimed by a recorder that has not written
    its run yet (or died before it could). Raises :class:`~twinpeaks.errors.RunFileError`
    when the folder holds no run.

    Example:
        >>> newest_run("runs")  # doctest: +SKIP
        PosixPath('runs/2026-11-30_090000.tp')
    """
    runs = [p for p in list_runs(folder) if _size(p)]
    if not runs:
        deeper = next((p for p in sorted(Path(folder).rglob("*" + RUN_SUFFIX)) if p.is_file()), None)
        hint = f" (sub-folders do: give one, e.g. {str(deeper.parent)!r})" if deeper is not None else ""
        raise RunFileError(f"no run files (*{RUN_SUFFIX}) in folder {str(folder)!r}{hint}")
    return runs[-1]


def resolve_run(path: str | os.PathLike) -> Path:
    """A run file's path as given; for a folder (see :func:`names_a_folder`), its newest run.

    Example:
        >>> resolve_run("runs/")  # doctest: +SKIP
        PosixPath('runs/2026-11-30_090000.tp')
    """
    if names_a_folder(path):
        if not Path(path).is_dir():
            raise RunFileError(f"no folder at {os.fspath(path)!r}")
        return newest_run(path)
    return Path(path)


def refuse_existing(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Fail now, with the fix in the message, if a new run could not be written at ``path``.

    A folder (see :func:`names_a_folder`) always takes a new run. A file path that
    exists is refused unless ``overwrite``; ``overwrite`` replaces a regular file only.

    Example:
        >>> refuse_existing("runs/exp1.tp")  # doctest: +SKIP
        Traceback (most recent call last):
        FileExistsError: path 'runs/exp1.tp' already exists; twinpeaks never overwrites a run unless told: ...
    """
    if names_a_folder(path):
        if os.path.lexists(path) and not Path(path).is_dir():
            raise NotADirectoryError(f"path {os.fspath(path)!r} ends with a separator but is not a folder")
        return
    p = Path(path)
    if not os.path.lexists(p):
        return
    if not overwrite:
        raise FileExistsError(
            f"path {str(p)!r} already exists; twinpeaks never overwrites a run unless told: pass overwrite=True "
            f"to replace it, or a folder (path={os.path.join(str(p.parent), '')!r}) to get a new, sortable run name "
            "each time"
        )
    if p.is_symlink() or not p.is_file():
        raise FileExistsError(f"path {str(p)!r} exists and is not a regular file: overwrite=True replaces run files only")


def claim(path: str | os.PathLike) -> bool:
    """Create ``path`` as an empty file if nothing is there (``O_EXCL``; its folder made if missing); False if taken."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if any(os.path.lexists(f"{os.fspath(path)}{s}") for s in ("-wal", "-shm", "-journal")):
        return False
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def next_run_path(folder: str | os.PathLike, now: datetime | None = None) -> Path:
    """The path a new run in ``folder`` gets now: free, and sorting after every twinpeaks name there.

    Nothing is created (:func:`claim_run_path` creates it). The folder need not exist.

    Example:
        >>> next_run_path("runs/")  # doctest: +SKIP
        PosixPath('runs/2026-11-29_231500.tp')
    """
    d = Path(folder)
    when = (now or datetime.now()).replace(microsecond=0)
    n = 1
    if d.is_dir():
        names = [parse_run_name(p.name) for p in d.iterdir()]
        latest = max((x for x in names if x is not None), default=None)
        if latest is not None and latest[0] >= when:  # same second, or the clock went back
            when, n = latest[0], latest[1] + 1
    while _taken(d / run_name(when, n)):
        n += 1
    return d / run_name(when, n)


def _taken(path: Path) -> bool:
    return any(os.path.lexists(f"{path}{s}") for s in ("", "-wal", "-shm", "-journal"))


def claim_run_path(folder: str | os.PathLike, now: datetime | None = None, *, attempts: int = 1000) -> Path:
    """Create an empty file under a new run name in ``folder`` (made if missing) and return its path.

    The file is created with ``O_EXCL``: two processes that start in the same second
    get different names. An empty file is an empty SQLite database, which the run
    writer then fills.

    Example:
        >>> path = claim_run_path("runs")  # doctest: +SKIP
    """
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        path = next_run_path(d, now)
        if claim(path):  # else another process took it between the look and the create
            return path
    raise RunFileError(f"found no free run name in {str(folder)!r} after {attempts} tries")


__all__ = [
    "RUN_SUFFIX", "claim", "claim_run_path", "refuse_existing", "list_runs", "names_a_folder", "newest_run", "next_run_path",
    "parse_run_name", "resolve_run", "run_name", "run_sort_key",
]
