"""The CPU runtime: freed activation memory is reused rather than faulted in again, and
denormal values are flushed to zero in every thread."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from imgclf.engine.runtime import flush_denormals, reuse_freed_memory
from imgclf.errors import ConfigError

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates and frees a 64 MB tensor, as a training step does with its activations, ten
# times (glibc settles where to put it), then counts the page faults of twenty more such
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
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not GLIBC, reason="freed memory is kept for reuse only under glibc")
def test_cpu_runtime_reuses_freed_memory_instead_of_faulting_it_in():
    def faults(**setting) -> int:
        env = {k: v for k, v in os.environ.items() if k != "IMGCLF_KEEP_FREED_MEMORY"}
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                             check=True, env=dict(env, **setting))
        return int(out.stdout.split()[-1])

    pages_touched = 20 * 64 * 2**20 // 4096
    # Kept, the block is reused: no faults, or now and then one step's worth, when another
    # allocation took part of the freed block. Given back, every step faults it in anew.
    kept, given_back = faults(), faults(IMGCLF_KEEP_FREED_MEMORY="0")
    assert kept < pages_touched // 10, f"{kept} page faults for {pages_touched} pages"
    assert given_back > pages_touched // 2, f"{given_back} page faults without the setting"


def test_keeping_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("IMGCLF_KEEP_FREED_MEMORY", "0")
    assert reuse_freed_memory.__wrapped__() is False
    monkeypatch.delenv("IMGCLF_KEEP_FREED_MEMORY")
    assert reuse_freed_memory.__wrapped__() is GLIBC


# In a fresh process, after SETUP: multiplies 2**20 denormal float32 values by one on two
# threads, and prints whether every product (each thread's share) came out as zero.
DENORMALS = """
import torch
{setup}
torch.set_num_threads(2)
x = torch.full((1 << 20,), 1 << 20, dtype=torch.int32).view(torch.float32)  # 1.5e-39
print(bool(((x * 1.0).view(torch.int32) == 0).all()))
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="checked where PyTorch sets x86's FTZ and DAZ flags")
@pytest.mark.parametrize("setup, flushed", [
    ("", False),
    ("from imgclf.engine.runtime import flush_denormals\nflush_denormals()", True),
    ("from imgclf.cli.main import main\nmain([])", True),  # the command, before any work
    ("import os\nos.environ['IMGCLF_FLUSH_DENORMALS'] = '0'\n"
     "from imgclf.engine.runtime import flush_denormals\nflush_denormals()", False),
    # What training, imgclf.load and imgclf.evaluate call on a CPU.
    ("from imgclf.engine.runtime import resolve_runtime\nresolve_runtime('cpu')", True),
], ids=["default", "flush_denormals", "imgclf command", "turned off", "cpu runtime"])
def test_denormals_are_flushed_in_every_thread(setup, flushed):
    env = {k: v for k, v in os.environ.items() if k != "IMGCLF_FLUSH_DENORMALS"}
    out = subprocess.run([sys.executable, "-c", DENORMALS.format(setup=setup)],
                         capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split()[-1] == str(flushed)


def test_flushing_denormals_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("IMGCLF_FLUSH_DENORMALS", "0")
    assert flush_denormals() is False


@pytest.mark.parametrize("device", [0, None, 1.5, "gpu", "mps", "meta", "xpu:0"])
def test_a_device_other_than_the_cpu_or_a_cuda_gpu_is_refused(device):
    from imgclf.engine.runtime import resolve_device
    from imgclf.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^device {device!r} is not valid; use auto, cpu, "
                                          r"cuda or cuda:N\.$"):
        resolve_device(device)


@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_a_cuda_device_without_a_gpu_is_named_as_given(device, monkeypatch):
    import torch

    from imgclf.engine.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=rf"^device '{device}' was asked for but no CUDA GPU"):
        resolve_device(device)


@pytest.mark.parametrize("machine, units, expected", [
    ("x86_64", (False, False), False),  # AVX512 alone (Skylake to Ice Lake): emulated bf16
    ("x86_64", (True, False), True),  # AVX512-BF16
    ("x86_64", (False, True), True),  # AMX
    ("aarch64", (False, False), True),  # oneDNN's check alone
])
def test_cpu_bf16_is_used_only_where_the_cpu_has_bf16_units(monkeypatch, machine, units,
                                                             expected):
    import torch

    from imgclf.engine import runtime

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: units[0])
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: units[1])
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert runtime.cpu_supports_bf16() is expected
    expected_dtype = torch.bfloat16 if expected else None
    assert runtime.resolve_runtime("cpu", "auto").amp_dtype == expected_dtype
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert runtime.cpu_supports_bf16() is False  # oneDNN's limits (ONEDNN_MAX_CPU_ISA) hold


def test_a_gpu_that_emulates_bf16_trains_in_float32(monkeypatch):
    import torch

    from imgclf.engine import runtime

    # A pre-Ampere GPU: PyTorch's check passes it when emulation counts (its default).
    monkeypatch.setattr(runtime, "resolve_device", lambda device: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    assert runtime.resolve_runtime("cuda", "auto").amp_dtype is None
    assert runtime.resolve_runtime("cuda", "bf16").amp_dtype == torch.bfloat16  # as asked
