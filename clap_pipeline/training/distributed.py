"""Data-parallel training under ``torchrun``: process group, feature gathering, sharding.

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous
(``MASTER_ADDR``/``MASTER_PORT``) for every process; ``Ranks.from_env`` reads them and
joins the group (gloo on CPU, nccl on CUDA). Without them training is one process
(``Ranks.single()``) and nothing here talks to a process group.

The contrastive loss needs every rank's features: ``gather_with_grad`` concatenates
them in rank order, and its backward sums the gradients of all ranks' losses before
returning this rank's slice, so DDP's gradient average equals the gradient of the
global-batch loss (see ``loss.contrastive_loss_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from clap_pipeline.config import torchrun_ranks


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 talks to MLflow, writes checkpoints and the report."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def single(cls) -> Ranks:
        return cls()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Ranks:
        """The ranks torchrun exported (one process without them)."""
        ranks = torchrun_ranks(environ)
        return cls.single() if ranks is None else cls(*ranks)


def device_for(ranks: Ranks, device: torch.device) -> torch.device:
    """One CUDA card per local rank; other devices are shared as they are."""
    if device.type == "cuda" and ranks.distributed:
        return torch.device("cuda", ranks.local_rank)
    return device


def init_process_group(ranks: Ranks, device: torch.device) -> None:
    """Join torchrun's group: nccl for CUDA, gloo otherwise (no-op for one process)."""
    if not ranks.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=ranks.rank, world_size=ranks.world_size)


def destroy_process_group(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(ranks: Ranks, value: Any = None) -> Any:
    """Rank 0's ``value`` on every rank (pickled; for small things: states, metrics)."""
    if not ranks.distributed:
        return value
    box = [value if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(ranks: Ranks, value: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) tensor over all ranks."""
    if not ranks.distributed:
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / ranks.world_size


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' (b, d) tensors as one (world * b, d) tensor, in rank order.

    Backward: every rank's loss depends on every rank's rows, so the gradient of the
    sum of the ranks' losses w.r.t. this rank's rows is the sum of all ranks'
    gradients for those rows (an all-reduce), sliced to this rank.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous())
        ctx.rows = (rank * local.shape[0], (rank + 1) * local.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start, end = ctx.rows
        return grad[start:end]


def gather_with_grad(ranks: Ranks, local: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``local`` concatenated in rank order; gradients reach the local rows.

    All ranks must pass the same number of rows (full batches only).
    """
    if not ranks.distributed:
        return local
    return _GatherWithGrad.apply(local)


def same_on_all_ranks(ranks: Ranks, values: Sequence[Any]) -> bool:
    """True when every rank holds the same ``values`` (checked once at start-up)."""
    if not ranks.distributed:
        return True
    gathered: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(gathered, list(values))
    return all(g == gathered[0] for g in gathered)
