"""Single-process and ``torchrun`` (DistributedDataParallel) training share one code path.

``DistributedContext.from_environment`` reads the variables torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR ...). Without them it is a plain single-process context whose methods do
nothing. With them it joins the process group (NCCL on GPUs, gloo on CPU), picks this rank's
device, wraps the model in DDP and offers the few collective helpers the training loop needs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from pairseg.errors import PairSegInputError


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: str = "auto") -> "DistributedContext":
        from pairseg.infer import resolve_device

        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls(device=resolve_device(device))
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        wanted = resolve_device(device)
        if wanted.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise PairSegInputError(f"rank {rank}: LOCAL_RANK {local_rank} but only "
                                        f"{torch.cuda.device_count()} GPU(s) on this node")
            torch.cuda.set_device(local_rank)
            chosen, backend = torch.device("cuda", local_rank), "nccl"
        elif wanted.type == "cpu":
            chosen, backend = wanted, "gloo"
        else:
            raise PairSegInputError(f"distributed training supports CUDA or CPU devices, not {wanted.type}")
        initialized_here = False
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend=backend)
            initialized_here = True
        return cls(rank, world_size, local_rank, chosen, initialized_here)

    def wrap(self, model: torch.nn.Module, sync_batchnorm: bool = False) -> torch.nn.Module:
        """The module the loop calls: DDP over ``model`` when distributed, else ``model``."""
        if not self.enabled:
            return model
        if sync_batchnorm:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def check_agreement(self, settings: dict) -> None:
        """Fail clearly when ranks were started with different data or settings."""
        if not self.enabled:
            return
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
        gathered: list = [None] * self.world_size
        torch_dist.all_gather_object(gathered, digest)
        if len(set(gathered)) != 1:
            differing = [r for r, d in enumerate(gathered) if d != gathered[0]]
            raise PairSegInputError(f"ranks disagree on training data or settings (rank(s) {differing} "
                                    "differ from rank 0); start every rank with the same command and data")

    def any_flag(self, flag: bool) -> bool:
        """True on every rank when any rank raised ``flag`` (e.g. a stop request)."""
        if not self.enabled:
            return bool(flag)
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def close(self) -> None:
        if self.initialized_here and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
