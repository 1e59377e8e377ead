"""Process pools that stop when asked and never outlive their parent.

Why this exists: a ``ProcessPoolExecutor`` left to itself lets Ctrl-C reach
every worker (each prints a traceback), then waits at interpreter exit for the
tasks already running (tens of seconds for a sweep), ignoring a second Ctrl-C;
and when the parent is killed (SIGKILL, OOM killer) its workers run on as
orphans, each holding its memory, for good. Three small pieces fix that:

* :func:`guarded_pool` makes the pool; each worker ignores SIGINT (the parent
  decides), asks Linux to SIGKILL it when its parent dies (``prctl
  PR_SET_PDEATHSIG``), and runs a watchdog thread that exits the worker when
  its parent process is gone (``os.getppid()`` changes), which also covers
  systems without prctl;
* :func:`stop_pool` kills the workers and drops queued work, so an
  interrupted caller returns in well under a second;
* :func:`exit_on_second_interrupt` makes a second Ctrl-C end the process at
  once, whatever the first one's cleanup is still doing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

WATCH_SECONDS = 0.25  # how often a worker checks that its parent is alive
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the thread that started it exits (best effort elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no libc prctl: the watchdog alone does the job
        pass


def _watch_parent(parent_pid: int) -> None:
    import time

    while True:
        if os.getppid() != parent_pid:
            os._exit(70)
        time.sleep(WATCH_SECONDS)


def _worker_start(parent_pid: int, initializer, initargs) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died while this worker was starting
        os._exit(70)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def guarded_pool(max_workers: int, mp_context=None, initializer=None, initargs=()):
    """A ``ProcessPoolExecutor`` whose workers ignore Ctrl-C and exit when this process dies.

    ``initializer``/``initargs`` run in each worker after the guard, as in the
    executor's own arguments.
    """
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=max_workers, mp_context=mp_context, initializer=_worker_start,
                               initargs=(os.getpid(), initializer, tuple(initargs)))


def stop_pool(pool) -> None:
    """Kill the pool's workers and cancel what is queued: nothing of it keeps running or is waited for."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for proc in processes:
        try:
            proc.kill()
        except (OSError, ValueError):  # already gone or closed
            pass
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        try:
            proc.join(timeout=1.0)
        except (OSError, ValueError, AssertionError):
            pass


def _exit_now(signum, frame) -> None:  # pragma: no cover - the process ends here
    try:
        sys.stderr.write("\ninterrupted again: stopping now\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def _first_interrupt(signum, frame) -> None:
    signal.signal(signal.SIGINT, _exit_now)  # kept until the process ends: the cleanup may be what hangs
    raise KeyboardInterrupt


def exit_on_second_interrupt() -> bool:
    """Install a SIGINT handler: the first Ctrl-C raises KeyboardInterrupt, the second exits the process.

    Only from the main thread (the only one that may set handlers) and only
    while SIGINT has Python's default handler (a caller's own is respected).
    Returns whether it was installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, _first_interrupt):
        return False
    signal.signal(signal.SIGINT, _first_interrupt)
    return True


def restore_interrupt() -> None:
    """Put Python's default SIGINT handler back after a run that was not interrupted."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _first_interrupt:
        signal.signal(signal.SIGINT, signal.default_int_handler)
