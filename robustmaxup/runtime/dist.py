"""One process-group helper for every command: where this process sits in a torchrun launch,
which device it uses, and the few collectives the package needs.

Example::

    d = Dist.from_env()                      # world 1 when run plainly
    device = d.device("auto")                # cuda:LOCAL_RANK under torchrun
    with d.group(device, backend="auto"):    # joins (and leaves) the process group
        d.barrier()
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from robustmaxup.errors import UserError

#: Whether this process has joined a process group (see :attr:`Dist.owns_its_errors`).
_joined = False


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"bad device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {spec} asked for, but CUDA is not available; use cpu")
    return device


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun launch (``world = 1`` when run plainly)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def owns_its_errors(self) -> bool:
        """Whether an error here may be this rank's own, so it should be reported: always on rank
        0; on another rank once it has joined the process group. Before that, every rank checks
        the same arguments and files, and rank 0's report speaks for all of them."""
        return self.main or _joined

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self, spec: str | torch.device = "auto") -> torch.device:
        """The device for this rank: ``cuda:LOCAL_RANK`` for an unindexed CUDA spec under torchrun."""
        device = resolve_device(spec)
        if self.distributed and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return device

    def init(self, device: torch.device, *, backend: str = "auto", long_wait: bool = False) -> bool:
        """Join the process group (no-op when not distributed, or already joined); True if this
        call joined it.

        ``backend="auto"``: NCCL on CUDA, gloo on CPU. ``long_wait``: a 7-day timeout, for
        commands whose shards may finish hours apart (certify), beyond NCCL's watchdog; they
        only need barriers, so they pass ``backend="gloo"``.
        """
        if not self.distributed:
            return False
        import torch.distributed as dist

        if dist.is_initialized():
            return False
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"timeout": datetime.timedelta(days=7)} if long_wait else {}
        dist.init_process_group(backend, **kwargs)
        global _joined
        _joined = True
        return True

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    @contextlib.contextmanager
    def group(self, device: torch.device, *, backend: str = "auto", long_wait: bool = False) -> Iterator["Dist"]:
        """Joined to the process group inside the block, left on exit (even on error). A group the
        caller had already joined stays joined."""
        joined = self.init(device, backend=backend, long_wait=long_wait)
        try:
            yield self
        finally:
            if joined:
                self.close()

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks in place (no-op alone); returns ``t``."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """``t`` of every rank, in rank order (``[t]`` alone)."""
        if not self.distributed:
            return [t]
        import torch.distributed as dist

        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t)
        return out

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's picklable ``obj`` on rank 0, in rank order; ``None`` on the other ranks
        (``[obj]`` alone). Inside :meth:`group`."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def check_divides(self, field: str, value: int) -> None:
        """FieldError unless ``value`` is divisible by the number of processes."""
        if value % self.world:
            from robustmaxup.runtime.checks import FieldError

            raise FieldError(field, f"must be divisible by the number of processes ({self.world}), got {value}")
