"""Where and how tensors are computed: device, autocast precision, memory format."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import platform
from dataclasses import dataclass

import torch

from imgclf.errors import ConfigError
from imgclf.machine import env_local_rank, switched_on

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def plain(self) -> Runtime:
        """The same device in float32 and the default memory format."""
        return Runtime(self.device, None, False)

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` moved to the device, in channels_last where this runtime uses it."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    @property
    def precision(self) -> str:
        """The float type the model computes in: "bfloat16" under autocast, else "float32"."""
        return str(self.amp_dtype or torch.float32).removeprefix("torch.")

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def describe(self) -> str:
        amp = self.precision if self.amp_dtype else "fp32"
        layout = ", channels_last" if self.channels_last else ""
        return f"{self.device.type} ({amp}{layout}, {torch.get_num_threads()} threads)"


def cpu_supports_bf16() -> bool:
    """bf16 is only faster than fp32 on CPUs with native bf16 units (AVX512-BF16 / AMX).

    oneDNN's own check (which honours ``ONEDNN_MAX_CPU_ISA``) also passes x86 CPUs with
    AVX512 but without those units (Skylake to Ice Lake), where bf16 is emulated: with
    oneDNN limited so, small_cnn trained at 122 images/s in bf16 against 328 in fp32, and
    EfficientNet-Lite0 at 9 against 21 (BENCHMARKS.md). On x86 the units themselves are
    asked for too."""
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
            return onednn
        return onednn and bool(torch.cpu._is_avx512_bf16_supported()
                               or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@functools.cache
def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks for reuse, instead of returning them to the OS.

    A CPU training step allocates and frees activations of tens of MB. glibc serves each
    block over 32 MB with a fresh ``mmap`` and unmaps it on free, so every step the kernel
    zeroes those pages again on first touch: with small_cnn at 150 px that page-fault
    traffic was a third of a step. With mmap off (``M_MMAP_MAX`` 0) and trimming only
    above 2 GB free (``M_TRIM_THRESHOLD``), big blocks come from the heap and are reused.
    The process then holds on to its peak memory until it exits. A no-op off glibc (macOS,
    Windows, musl) and when the environment sets ``IMGCLF_KEEP_FREED_MEMORY=0``; returns
    whether the settings took.
    """
    if not switched_on("IMGCLF_KEEP_FREED_MEMORY"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    log.debug("glibc malloc keeps freed memory for reuse: %s", done)
    return done


def flush_denormals() -> bool:
    """Have the CPU treat float32 and float64 values too small to be normal (below about
    1.2e-38 in float32) as zero: x86's FTZ and DAZ flags, ARM's FZ.

    Weights whose gradient stays zero for many steps (inputs or units that ReLU leaves
    silent) see their Adam moments decay by a constant factor each step, into that
    denormal range after a few epochs; on x86 each operation that reads or writes such a
    value then takes a slow microcode path. The augment preset's epochs went from 39 s to
    54 s from the fourth on; after six, 11.6 million of its dense layer's 18.9 million
    first moments were denormal.
    TensorFlow flushes them by default.

    The flags belong to each thread, and a new thread copies them from the thread that
    starts it: this must run before PyTorch's first parallel operation starts its thread
    pool, or only the calling thread gets them. The ``imgclf`` command calls it first
    thing, and ``resolve_runtime`` calls it for CPU runs. ``IMGCLF_FLUSH_DENORMALS=0`` in
    the environment turns it off; returns whether the flags are set.
    """
    if not switched_on("IMGCLF_FLUSH_DENORMALS"):
        return False
    return torch.set_flush_denormal(True)


def resolve_device(device: str = "auto") -> torch.device:
    """The device ``device`` names (auto: CUDA when present, else the CPU), checked.

    A bare ``cuda`` is the GPU of the process's local rank (0 unless torchrun set one).
    """
    if not isinstance(device, str | torch.device):  # torch.device(0) would be cuda:0
        raise ConfigError(f"device {device!r} is not valid; use auto, cpu, cuda or cuda:N.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):  # imgclf runs on these two
        raise ConfigError(f"device {device!r} is not valid; use auto, cpu, cuda or cuda:N.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(device)!r} was asked for but no CUDA GPU is available; use "
            "--device cpu."
        )
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", env_local_rank())
    return dev


def resolve_runtime(device: str = "auto", amp: str = "auto", channels_last: bool = True) -> Runtime:
    """Pick CUDA when present, else CPU; bf16 autocast where the hardware runs it natively.

    On CPU, large freed tensors are kept for reuse (``reuse_freed_memory``) and denormal
    values are flushed to zero (``flush_denormals``).
    """
    dev = resolve_device(device)
    if dev.type == "cpu":
        reuse_freed_memory()
        flush_denormals()
    if amp == "auto":
        if dev.type == "cuda":
            # Natively (Ampere and later): the check's default counts emulation too.
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) \
                else None
        else:
            dtype = torch.bfloat16 if cpu_supports_bf16() else None
    elif amp == "bf16":
        dtype = torch.bfloat16
    else:
        dtype = None
    return Runtime(dev, dtype, channels_last)
