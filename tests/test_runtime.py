"""The CPU runtime: freed activation memory is reused rather than faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Allocates and frees a 64 MB tensor, as a training step does with its activations, ten
# times (glibc settles where to put it), then counts the page faults of five more such
# steps, in a fresh process.
PROBE = """
import resource, torch
from imgclf.engine.runtime import resolve_runtime
resolve_runtime("cpu")
def step():
    torch.empty(16 * 2**20).fill_(1.0)
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="freed memory is kept for reuse only under glibc")
def test_cpu_runtime_reuses_freed_memory_instead_of_faulting_it_in():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True)
    faults = int(out.stdout.split()[-1])
    pages_touched = 5 * 64 * 2**20 // 4096
    assert faults < pages_touched // 100, f"{faults} page faults for {pages_touched} pages"
