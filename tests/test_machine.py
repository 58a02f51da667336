"""Tests for imgclf.machine: the cores a process may use, not the machine's count."""

from __future__ import annotations

import os

import pytest

from imgclf import machine
from imgclf.data.datasets import default_workers
from imgclf.machine import available_cores


def test_cores_are_those_the_process_may_run_on(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6}, raising=False)
    assert available_cores() == 3
    # Loader processes for per-image augmentation: one per spare core of those three.
    assert default_workers(transform=lambda image: image) == 2


def test_interrupts_deferred_to_the_end_of_the_block():
    import signal
    import time

    import pytest

    from imgclf.machine import interrupts_deferred

    got = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                got.append("block ended")
        assert got == ["block ended", signal.SIGTERM]  # each handler, once it ended
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("value, on", [(None, True), ("1", True), ("yes", True), ("0", False),
                                       ("false", False), (" Off ", False), ("NO", False)])
def test_a_speed_switch_is_on_unless_set_to_an_off_value(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv("IMGCLF_SOME_SWITCH", raising=False)
    else:
        monkeypatch.setenv("IMGCLF_SOME_SWITCH", value)
    assert machine.switched_on("IMGCLF_SOME_SWITCH") is on


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_process_started_with_a_signal_blocked_takes_it_once_it_unblocks(name):
    # As a compare worker: a signal while it imports its modules waits for its handler.
    import signal
    import subprocess
    import sys

    probe = ("import os, signal, time\n"
             "from imgclf.machine import unblock_signals\n"
             f"os.kill(os.getpid(), signal.{name})\n"
             "time.sleep(0.1)\n"
             "print('alive', flush=True)\n"
             f"signal.signal(signal.{name}, lambda *args: print('noted', flush=True))\n"
             f"unblock_signals(signal.{name})\n")
    with machine.signals_blocked(getattr(signal, name)):
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                timeout=120)
    assert result.stdout.split() == ["alive", "noted"], result.stderr
