"""What this process may use of the machine it runs on, which of imgclf's speed switches the
environment turns off, and how signals stop the process."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

OFF = ("0", "false", "no", "off")
"""The values of an ``IMGCLF_*`` switch that turn it off (any case)."""


def switched_on(name: str) -> bool:
    """Whether the environment leaves the speed switch ``name`` (``IMGCLF_FUSED_KERNELS``,
    say) on: it is on unless set to 0, false, no or off."""
    return os.environ.get(name, "1").strip().lower() not in OFF


def available_cores() -> int:
    """CPU cores this process may run on: fewer than the machine has under taskset, a
    container's CPU set or a batch scheduler's, where ``os.cpu_count()`` counts them all."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def env_rank() -> int:
    """The rank torchrun assigned this process, readable before the process group exists."""
    return int(os.environ.get("RANK", 0))


def env_local_rank() -> int:
    """The process's rank among those torchrun started on this machine (0 when alone)."""
    return int(os.environ.get("LOCAL_RANK", 0))


@contextlib.contextmanager
def interrupted_by(*signums: int):
    """Within the block, each signal of ``signums`` raises KeyboardInterrupt, as Ctrl-C's
    SIGINT does by default: the work stops as it does at Ctrl-C (progress saved, temporary
    files removed, a message said)."""
    with _handled(signums, signal.default_int_handler):
        yield


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C (SIGINT) and SIGTERM received within the block take effect when it ends, as if
    they came then (in the order they came; once one raises, as Ctrl-C does, the rest are
    not raised again). For code that an exception must not stop part-way: numba, compiling a
    kernel at its first call, runs Python callbacks whose exceptions it ignores, and a
    KeyboardInterrupt raised in one left the process hanging."""
    received: list[int] = []
    try:
        with _handled((signal.SIGINT, signal.SIGTERM), lambda s, frame: received.append(s)):
            yield
    finally:
        for signum in received:
            signal.raise_signal(signum)


@contextlib.contextmanager
def signals_blocked(*signums: int):
    """Within the block, ``signums`` are blocked in this thread: one that comes waits until
    the block ends, unless another thread takes it. A process started within the block
    (multiprocessing's spawn, a subprocess) begins with them blocked, until it calls
    ``unblock_signals``: a Ctrl-C then waits until it can handle it, instead of stopping
    it with a traceback while it imports its modules. Where there are no signal masks
    (Windows), nothing changes."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def unblock_signals(*signums: int) -> None:
    """Let ``signums`` through to this thread (blocked by ``signals_blocked`` when the
    process started); one that came meanwhile is handled now."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)


@contextlib.contextmanager
def _handled(signums, handler):
    """Within the block, ``handler`` handles each signal of ``signums``; then their handlers
    are put back. Outside the main thread, where Python cannot set a handler, nothing
    changes, nor does a signal whose handler was set outside Python (it cannot be put back).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.signal(signum, handler) for signum in signums
              if signal.getsignal(signum) is not None}
    try:
        yield
    finally:
        for signum, old in before.items():
            signal.signal(signum, old)
