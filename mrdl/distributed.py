"""Where a training process runs: one process, or one rank of a ``torchrun`` job (PyTorch DDP).

``torchrun --nproc-per-node N -m mrdl_apps train ...`` starts N processes and tells each, through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), who it is.
:func:`setup` reads that, joins the process group (NCCL for CUDA devices, gloo on CPU) and picks the
device: ``cuda:<LOCAL_RANK>`` with ``--device cuda``, else the CPU. Without those variables it is a
plain single process and nothing distributed is touched.

Rank 0 alone validates, decides early stopping and writes files; :meth:`Distributed.broadcast_flags`
hands its decision to every rank as a small tensor (no pickled objects cross the wire). A rank that
dies closes its connections, so the others fail in their next collective instead of hanging, and
torchrun stops the whole job with a non-zero exit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from mrdl_runtime.errors import MrdlError

DEVICES = ("cpu", "cuda")


class DistributedError(MrdlError, RuntimeError):
    """A distributed setting that cannot work (bad environment, a backend or device that is absent)."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # "nccl" or "gloo" when a process group is up

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_flags(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank (float64, so epoch numbers and scores stay exact)."""
        if not self.enabled:
            return list(values)
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device)
        dist.broadcast(tensor, src=0)
        return tensor.cpu().tolist()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Each entry summed over the ranks."""
        if not self.enabled:
            return list(values)
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def close(self) -> None:
        """Leave the process group (after a clean finish; a failed rank just exits)."""
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    """True when this process is one rank of a multi-process job (``WORLD_SIZE`` > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise DistributedError(f"WORLD_SIZE is set but {name} is not: start multi-process training with "
                               "torchrun (e.g. torchrun --nproc-per-node 2 -m mrdl_apps train ...)")
    try:
        return int(value)
    except ValueError as exc:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from exc


def setup(device: str = "cpu", *, timeout_s: float = 600.0) -> Distributed:
    """Join the torchrun job described by the environment, if any, and choose this rank's device.

    ``device`` is ``"cpu"`` or ``"cuda"``. CUDA requests fail clearly when no GPU is visible, or
    when a job has more ranks on a node than it has GPUs. ``timeout_s`` bounds a collective that
    waits for a rank that never comes.
    """
    if device not in DEVICES:
        raise DistributedError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise DistributedError("--device cuda was asked for but torch sees no CUDA GPU here "
                               f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu")
    if not launched_by_torchrun():
        return Distributed(device=torch.device("cuda:0" if device == "cuda" else "cpu"))
    import torch.distributed as dist

    world_size, rank, local_rank = _env_int("WORLD_SIZE"), _env_int("RANK"), _env_int("LOCAL_RANK")
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"local rank {local_rank} has no GPU: this node shows "
                                   f"{torch.cuda.device_count()}; use --nproc-per-node <= the GPU count")
        torch.cuda.set_device(local_rank)
        chosen, backend = torch.device("cuda", local_rank), "nccl"
    else:
        chosen, backend = torch.device("cpu"), "gloo"
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; multi-process training is unavailable")
    if not dist.is_initialized():
        kwargs = {"device_id": chosen} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen, backend=backend)
