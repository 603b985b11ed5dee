"""Data-parallel training under ``torchrun`` (DDP): NCCL on GPU, gloo on CPU.

Single-process runs need nothing: ``init_distributed`` returns a context with
``world_size == 1`` and the helpers become no-ops. Under ``torchrun --nproc-per-node N``
(or multi-node with ``--nnodes``), the environment variables RANK, WORLD_SIZE and
LOCAL_RANK select the process group and the device (``cuda:LOCAL_RANK``); the
CUDA_VISIBLE_DEVICES set by a scheduler is left untouched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: "object"  # torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun; pick this process's device."""
    import torch
    import torch.distributed as dist

    from cryovox.utils.runtime import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def wrap_model(model, ctx: DistContext):
    """DistributedDataParallel around ``model`` when running distributed, else the model itself."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if ctx.device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[ctx.device.index])
    return DistributedDataParallel(model)


def unwrap(model):
    """The underlying module of a DDP wrapper."""
    return getattr(model, "module", model)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(tensor, ctx: DistContext):
    """Sum ``tensor`` over all processes in place (no-op when single-process)."""
    if ctx.distributed:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(tensor, ctx: DistContext):
    """Concatenate per-process ``(n_i, ...)`` tensors along dim 0 (sizes may differ)."""
    if not ctx.distributed:
        return tensor
    import torch
    import torch.distributed as dist

    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, n)
    top = int(max(s.item() for s in sizes))
    padded = torch.zeros((top, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    out = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)], 0)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
