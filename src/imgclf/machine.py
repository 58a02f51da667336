"""What this process may use of the machine it runs on."""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on: fewer than the machine has under taskset, a
    container's CPU set or a batch scheduler's, where ``os.cpu_count()`` counts them all."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
