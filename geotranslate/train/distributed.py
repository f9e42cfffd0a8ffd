"""DistributedDataParallel setup for ``torchrun --nproc_per_node N -m geotranslate train …``.

torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; with WORLD_SIZE > 1 we join the process group
(gloo on CPU, nccl on CUDA). Rank 0 alone logs and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> DistContext:
    """Join the process group when launched by torchrun with more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    ctx = DistContext(int(os.environ.get("RANK", "0")), world_size,
                      int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend=backend)
    return ctx


def broadcast(value: Any, ctx: DistContext) -> Any:
    """Rank 0's value on every rank (e.g. the run directory, whose name holds a timestamp)."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def ranks_agree(nets: dict[str, torch.nn.Module], ctx: DistContext) -> list[str]:
    """Names of the networks whose weights differ between ranks (a broken DDP setup)."""
    if not ctx.enabled:
        return []
    names = sorted(nets)
    local = torch.tensor([sum(float(p.detach().double().abs().sum()) for p in
                              nets[n].parameters()) for n in names], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        local = local.cuda()
    gathered = [torch.zeros_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, local)
    return [n for i, n in enumerate(names) if any(g[i] != gathered[0][i] for g in gathered)]


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. a Ctrl-C seen by one process)."""
    if not ctx.enabled:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
