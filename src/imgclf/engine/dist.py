"""The few facts about distributed training the rest of imgclf needs.

Single-process runs see rank 0 of a world of 1, so callers never branch on whether
``torch.distributed`` is in use.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as td

from imgclf.engine.runtime import resolve_device
from imgclf.errors import ConfigError, RunError
from imgclf.machine import available_cores, env_local_rank


def is_distributed() -> bool:
    return td.is_available() and td.is_initialized()


def world_size() -> int:
    return td.get_world_size() if is_distributed() else 1


def rank() -> int:
    return td.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """True on the process that writes files and logs (rank 0)."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 (ranks may hold different counts)."""
    if not is_distributed():
        return tensor
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    td.all_gather(counts, count)
    size = int(max(c.item() for c in counts))
    padded = torch.zeros((size, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world_size())]
    td.all_gather(parts, padded)
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts, strict=False)])


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's decision, obeyed by every rank (early stopping, say)."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)])
    td.broadcast(value, src=0)
    return bool(value.item())


def barrier() -> None:
    if is_distributed():
        td.barrier()


def wait_for_main() -> None:
    """On a rank other than 0: wait while rank 0 works alone (decoding into the cache). Should
    rank 0 stop there with an error of its own, the connection closes under this barrier,
    and this rank stops with one line that points to that error, not with a traceback."""
    try:
        barrier()
    except RuntimeError as exc:  # gloo and NCCL: the peer closed its connection
        raise RunError(f"rank {rank()} stopped: rank 0 stopped before training began, "
                       "and its own error line says why.") from exc


def init_from_env(device: str = "auto") -> bool:
    """Join the process group that torchrun describes in the environment, if any.

    NCCL when the run uses GPUs (``device`` resolves to CUDA, as in ``resolve_runtime``),
    each process on the GPU of its local rank, with gloo beside it for the CPU tensors the
    loop reduces and gathers (NCCL carries CUDA tensors only); gloo on CPU, each process
    with its share of the cores. Returns True when this call started the group (the caller
    then shuts it down).
    """
    if not launched_by_torchrun() or is_distributed():
        return False
    local_rank = env_local_rank()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if resolve_device(device).type == "cuda":
        gpus = torch.cuda.device_count()
        if local_world > gpus:
            raise ConfigError(
                f"torchrun started {local_world} processes on this machine but it has {gpus} "
                f"GPU(s); start at most {gpus} (--nproc_per_node {gpus}), or train on the CPU "
                "with --device cpu."
            )
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
        torch.set_num_threads(max(1, available_cores() // local_world))
    td.init_process_group(backend)
    return True


def shutdown() -> None:
    if is_distributed():
        td.destroy_process_group()
