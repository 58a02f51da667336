"""Tests for imgclf.machine: the cores a process may use, not the machine's count."""

from __future__ import annotations

import os

from imgclf.data.datasets import default_workers
from imgclf.machine import available_cores


def test_cores_are_those_the_process_may_run_on(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6}, raising=False)
    assert available_cores() == 3
    # Loader processes for per-image augmentation: one per spare core of those three.
    assert default_workers(transform=lambda image: image) == 2
