"""torch.distributed glue: one process per GPU (or CPU worker) under ``torchrun``.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every helper is a no-op, so the same
training code runs in a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass
class DistContext:
    """Where this process stands in a distributed run."""

    world_size: int = 1
    rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that logs and writes files."""
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """Wrap a module in DistributedDataParallel (gradients all-reduced each step)."""
        if self.world_size == 1:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def average_gradients(self, module: torch.nn.Module) -> None:
        """Average the gradients of ``module`` over all ranks (no-op in one process).

        For a module whose several entry points (``features``, heads) are called
        directly, which DistributedDataParallel cannot follow.
        """
        if self.world_size == 1:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        torch_dist.all_reduce(flat)
        flat /= self.world_size
        for grad, part in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(part.view_as(grad))

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every rank, as DDP does."""
        if self.world_size == 1:
            return
        for buffer in module.buffers():
            torch_dist.broadcast(buffer, src=0)

    def shard_batches(self, order: torch.Tensor, batch_size: int,
                      drop_last: bool = True) -> list[torch.Tensor]:
        """This rank's batches of a global shuffled order; every rank gets as many.

        Every rank takes the same number of images, so the same number of steps. With
        ``drop_last`` a trailing partial batch is dropped when full batches exist;
        without it, only a trailing single image is (BatchNorm cannot train on one).
        """
        per_rank = len(order) // self.world_size
        mine = order[: per_rank * self.world_size][self.rank :: self.world_size]
        batches = list(mine.split(batch_size))
        smallest = batch_size if drop_last else 2
        if len(batches) > 1 and len(batches[-1]) < smallest:
            batches.pop()
        return batches

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``values`` over all ranks (a copy; no-op in one process)."""
        total = values.detach().clone()
        if self.world_size > 1:
            torch_dist.all_reduce(total)
        return total

    def check_replicas_identical(self, modules: list[torch.nn.Module]) -> None:
        """Raise if any rank's parameters differ from rank 0's (DDP keeps them equal)."""
        if self.world_size == 1:
            return
        flat = torch.cat([p.detach().float().flatten().cpu() for m in modules
                          for p in m.parameters()])
        reference = flat.clone().to(self.device)
        torch_dist.broadcast(reference, src=0)
        mismatch = torch.tensor([float(not torch.equal(reference.cpu(), flat))],
                                device=self.device)
        torch_dist.all_reduce(mismatch)
        if mismatch.item() > 0:
            raise RuntimeError(f"model weights differ across ranks ({int(mismatch.item())} "
                               "rank(s) disagree with rank 0)")

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.world_size > 1:
            torch_dist.barrier()

    def teardown(self) -> None:
        """Leave the process group."""
        if self.world_size > 1 and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def setup() -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment.

    NCCL on GPUs, Gloo on CPUs. Returns a single-process context when not under torchrun.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend)
    return DistContext(world_size, rank, device)


def is_main() -> bool:
    """True unless this is a non-zero rank of a torchrun job."""
    return int(os.environ.get("RANK", "0")) == 0
