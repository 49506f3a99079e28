"""The writer thread: a recorder's host-side writing (column stores, merges, SQLite) off the training thread.

Design constraints:

* A flush in a step only hands its rows over: the training thread takes the window's rows
  (a copy of small device rows) and queues one job; column stores, merges, encoding and the
  commit run here, in order. SQLite and most of numpy release the GIL while they work.
* Bounded: at most ``depth`` jobs wait (each holds one window's rows); a further hand-over
  waits for the thread, so a disk slower than training costs time, never unbounded memory.
* Committed on return: :meth:`WriterThread.wait` returns once every job handed over has run
  (``end_epoch``, ``flush`` and ``close`` wait, so what they return from is in the file).
* Never crash training, never hide a bug: the file's own failures (full disk, a second writer)
  are the run writer's (it warns once and keeps its queue; a read that fails is a message too); messages meant for the user are
  issued on the training thread (:meth:`WriterThread.deliver`), so they point at the user's line;
  any other exception of a job is re-raised on the training thread at the next hand-over or wait.
* One daemon thread per recorder, started at the first job, ended by :meth:`WriterThread.close`.
  Torch-free.
"""

from __future__ import annotations

import atexit
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable

Job = Callable[[], None]

_THREAD_PREFIX = "twinpeaks-writer-"

#: At interpreter exit, how long the jobs still queued (windows handed over, not yet written) may take to finish.
EXIT_WAIT_S = 60.0


def _drain_at_exit() -> None:
    """Let the writers' threads finish what was handed over before the interpreter ends (their daemon threads
    would be stopped mid-write): a script that never calls ``close()`` keeps the windows its steps handed over,
    as when they were committed inside the step. Bounded by :data:`EXIT_WAIT_S` in all."""
    end = time.monotonic() + EXIT_WAIT_S
    for writer in list(_STARTED):
        thread = writer._thread
        while thread is not None and thread.is_alive() and writer._queue.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.01)


#: Writers whose thread has started (weakly held): drained at interpreter exit, by one handler.
_STARTED: weakref.WeakSet[WriterThread] = weakref.WeakSet()
atexit.register(_drain_at_exit)


#: How long the writer's thread sleeps between two cohorts' work when it does not spread it (:func:`pause`):
#: long enough for a waiting training thread to take the GIL. (Spreading a merge, when every layer's columns
#: merge at once, made the writer fall a window behind and a step wait for it: merges are not spread.)
PAUSE_S = 50e-6


#: After a stretch of work, the writer's thread sleeps this many times as long (at most :data:`SPREAD_MAX_S`),
#: unless the training thread waits for it: a window's work is spread over several steps, each slowed a little,
#: instead of one step slowed by all of it.
SPREAD = float(os.environ.get("TWINPEAKS_SPREAD", "2"))
SPREAD_MAX_S = 0.02
_urgent = threading.Event()  # set while a training thread waits for a writer (see _Waiting)
_last = threading.local()


class _Waiting:
    """While a training thread waits for a writer: no spreading (``_urgent`` set until the last waiter is done,
    several recorders' training threads may wait at once)."""

    _lock = threading.Lock()
    _waiters = 0

    def __enter__(self) -> None:
        with _Waiting._lock:
            _Waiting._waiters += 1
            _urgent.set()

    def __exit__(self, *exc: object) -> None:
        with _Waiting._lock:
            _Waiting._waiters -= 1
            if _Waiting._waiters == 0:
                _urgent.clear()


def _on_writer_thread() -> bool:
    """Whether the caller is a writer's thread (any recorder's: :class:`WriterThread` names them so)."""
    return threading.current_thread().name.startswith(_THREAD_PREFIX)


#: How long a window's job waits before it starts, unless the training thread waits for it (:func:`start_later`).
START_S = 0.02


def start_later() -> None:
    """At the start of a window's job: let the step that handed the window over end first (it paid for the
    hand-over; the job's first work would slow it more). A no-op off the writer's thread, without spreading, or
    while the training thread waits for the writer."""
    if SPREAD > 0 and _on_writer_thread() and not _urgent.is_set():
        _urgent.wait(START_S)
    _last.t = time.perf_counter()


def pause(spread: bool = True) -> None:
    """Let the training thread run (release the GIL briefly; with ``spread``, sleep in proportion to the work
    done since the last pause, see :data:`SPREAD`); a no-op off the writer's thread."""
    if _on_writer_thread():
        now = time.perf_counter()
        worked = now - getattr(_last, "t", now)
        if spread and SPREAD > 0 and not _urgent.is_set():
            _urgent.wait(min(SPREAD * worked, SPREAD_MAX_S))
        else:
            time.sleep(PAUSE_S)
        _last.t = time.perf_counter()


class WriterThread:
    """Runs jobs in order on one daemon thread, started lazily.

    Example:
        >>> done = []
        >>> t = WriterThread("example")
        >>> t.submit(lambda: done.append(1)); t.wait(); t.close()
        >>> done
        [1]
    """

    def __init__(self, name: str, depth: int = 1):
        self.name = name
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._messages: list[str] = []  # for the user: issued on the training thread
        self._lock = threading.Lock()
        #: Background work done while no job waits, a piece per call (it returns whether more is left): the
        #: writer's deferred merges. ``wait`` does not wait for it; ``close`` leaves what is left to the caller.
        self.idle: Callable[[], bool] | None = None
        self._idle_left = False

    @property
    def running(self) -> bool:
        return self._thread is not None

    def on_thread(self) -> bool:
        """Whether the caller is this writer's thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def job_waiting(self) -> bool:
        """Whether a job waits (or a training thread waits for a writer): idle work stops where it can."""
        return not self._queue.empty() or _urgent.is_set()

    def submit(self, job: Job) -> None:
        """Queue ``job`` (waits while ``depth`` jobs already wait); re-raises a failed job's exception first."""
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"{_THREAD_PREFIX}{self.name}", daemon=True)
            self._thread.start()
            _STARTED.add(self)  # a script that ends without close() keeps its windows (_drain_at_exit)
        try:
            self._queue.put_nowait(job)
        except queue.Full:  # the training thread waits for the writer: no spreading meanwhile
            with _Waiting():
                self._queue.put(job)

    def wait(self) -> None:
        """Return once every job submitted so far has run; re-raise the first exception of one that failed."""
        if self._thread is not None:
            with _Waiting():  # the training thread waits: no spreading
                self._queue.join()
        self._raise()

    def say(self, message: str) -> None:
        """Keep a message for the user (called on this thread), delivered by :meth:`deliver`."""
        with self._lock:
            self._messages.append(message)

    def deliver(self) -> list[str]:
        """The messages kept since the last call (on the training thread)."""
        with self._lock:
            out, self._messages = self._messages, []
        return out

    def close(self) -> None:
        """Run what is queued and end the thread (it can start again at the next job)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()
        self._raise()

    def _raise(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            job = self._next()
            try:
                if job is None:
                    return
                self._work(job)
            finally:
                self._queue.task_done()
            self._idle_left = self.idle is not None

    def _next(self) -> Job | None:
        """The next job; while none waits, a piece of the idle work (:attr:`idle`) at a time."""
        while self._idle_left:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            self._idle_left = False
            if self.idle is not None and self._error is None:
                self._work(self._idle_piece)
        return self._queue.get()

    def _idle_piece(self) -> None:
        idle = self.idle
        self._idle_left = idle is not None and bool(idle())

    def _work(self, job: Job) -> None:
        try:
            _last.t = time.perf_counter()
            job()
        except (sqlite3.Error, OSError) as exc:  # the file failed outside a commit (which keeps its queue)
            self.say(f"could not write to the run file ({exc}); training goes on, the file keeps what it held")
        except BaseException as exc:  # re-raised on the training thread
            if self._error is None:
                self._error = exc
