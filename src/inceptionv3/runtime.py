"""Where the work runs: the device, and the process group under torchrun."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .errors import InputError

logger = logging.getLogger("inceptionv3")


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or the best available one: CUDA (the current one), then Apple MPS, then the CPU.
    Logged, so it is never a surprise which one ran."""
    if device is not None:
        chosen = torch.device(device)
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device={str(device)!r}: CUDA is not available on this machine")
        if chosen.type == "mps" and not torch.backends.mps.is_available():
            raise InputError(f"device={str(device)!r}: Apple MPS is not available on this machine")
        logger.info("device %s (requested)", chosen)
        return chosen
    if torch.cuda.is_available():
        chosen, why = torch.device("cuda", torch.cuda.current_device()), torch.cuda.get_device_name()
    elif torch.backends.mps.is_available():
        chosen, why = torch.device("mps"), "Apple MPS"
    else:
        chosen, why = torch.device("cpu"), f"no CUDA or MPS; {torch.get_num_threads()} threads"
    logger.info("device %s (%s)", chosen, why)
    return chosen


def rank_world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) outside torchrun."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints and writes results."""
    return rank_world()[0] == 0


def shard(count: int, chunk: int, rank: int | None = None, world: int | None = None) -> list[int]:
    """This process's positions of ``count`` items: whole chunks of ``chunk``, chunk k to rank k mod world. Each
    chunk is then exactly the batch one process would run, so results are bit-identical to one process."""
    if rank is None or world is None:
        rank, world = rank_world()
    return [i for start in range(rank * chunk, count, world * chunk) for i in range(start, min(start + chunk, count))]


def all_reduce_sum(tensor: torch.Tensor, group: object = None) -> None:
    """Sum a CPU tensor over the process group, in place (NCCL reduces device tensors only, so it travels)."""
    if dist.get_backend(group) == "nccl":
        on_device = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_device, group=group)
        tensor.copy_(on_device.cpu())
    else:
        dist.all_reduce(tensor, group=group)


def init_distributed() -> torch.device | None:
    """Under torchrun (WORLD_SIZE > 1): join the group, gloo on CPU and nccl on GPU, one GPU per rank; the
    device this rank uses. None outside torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return None
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return torch.device("cpu")



@contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off for convolutions and matmuls while features are extracted: on Ampere and later GPUs cuDNN
    convolves in TF32 by default (10-bit mantissas), which moves FID by far more than float32 rounding does.
    The settings are restored afterwards; on a CPU they change nothing."""
    settings = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    saved = [setting.fp32_precision for setting in settings]
    try:
        for setting in settings:
            setting.fp32_precision = "ieee"
        yield
    finally:
        for setting, value in zip(settings, saved, strict=True):
            setting.fp32_precision = value

__all__ = ["all_reduce_sum", "full_fp32", "init_distributed", "is_main_process", "rank_world", "select_device", "shard"]
