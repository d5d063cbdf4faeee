"""Single-process and ``torchrun`` (DistributedDataParallel) training share one code path.

``DistributedContext.from_environment`` reads the variables torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without them it is a plain single-process context whose
methods do nothing. With them it joins the process group (NCCL on CUDA, gloo on CPU), picks this
rank's device (``cuda:LOCAL_RANK``), wraps the model in DDP and offers the few collective helpers
the training loop needs:

- ``check_agreement(settings)``: every rank must start with the same data and settings; a rank
  that differs makes every rank fail with the same clear error (exit code 2 from ``pairseg
  train``) instead of training on silently different data.
- ``reduce_step(loss, stop)``: one all-reduce per step that averages the loss over the ranks and
  tells every rank whether any rank asked to stop (SIGINT/SIGTERM, stop file) or saw a
  non-finite loss, so all ranks stop or fail after the same step.
- ``any_flag``, ``barrier``, ``close``.

Every collective has a timeout (``PAIRSEG_DIST_TIMEOUT_S``, default 1800 s): a rank that died
or hangs makes the others fail after at most that long rather than wait forever (torchrun also
stops the remaining ranks as soon as one rank exits with an error).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as torch_dist

from pairseg.errors import PairSegInputError

__all__ = ["DistributedContext", "DEFAULT_TIMEOUT_S", "tensor_digest"]

DEFAULT_TIMEOUT_S = 1800.0
_TIMEOUT_VARIABLE = "PAIRSEG_DIST_TIMEOUT_S"


def _timeout() -> datetime.timedelta:
    text = os.environ.get(_TIMEOUT_VARIABLE, "").strip()
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError as error:
        raise PairSegInputError(f"{_TIMEOUT_VARIABLE}={text!r} is not a number of seconds") from error
    if not seconds > 0:
        raise PairSegInputError(f"{_TIMEOUT_VARIABLE} must be positive, got {text!r}")
    return datetime.timedelta(seconds=seconds)


def tensor_digest(tensors: Iterable[torch.Tensor], stride: int = 1) -> str:
    """SHA-256 over the shapes, dtypes and (every ``stride``-th element of the) values.

    Used to check that every rank loaded the same training data: labels are hashed whole, the
    (much larger) images with a stride, which still catches a different case, slice or
    normalisation.
    """
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu()
        digest.update(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        flat = tensor.reshape(-1)[::max(1, int(stride))].contiguous()
        if flat.dtype == torch.bfloat16:
            flat = flat.float()
        digest.update(flat.numpy().tobytes())
    return digest.hexdigest()


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

    @property
    def backend(self) -> str | None:
        return torch_dist.get_backend() if self.enabled and torch_dist.is_initialized() else None

    @classmethod
    def from_environment(cls, device: str = "auto") -> "DistributedContext":
        """The context of this process: torchrun's ranks when WORLD_SIZE > 1, else one process."""
        from pairseg.devices import resolve_device

        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls(device=resolve_device(device))
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise PairSegInputError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start "
                                    "distributed training with torchrun (see the README, 'Training on several GPUs or machines')")
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        wanted = resolve_device(device)
        if wanted.type == "cuda":
            count = torch.cuda.device_count()
            if local_rank >= count:
                raise PairSegInputError(f"rank {rank}: LOCAL_RANK {local_rank} but only {count} GPU(s) on "
                                        "this node; give --nproc-per-node at most the number of GPUs")
            # One GPU per process: torchrun's LOCAL_RANK picks it, whatever --device cuda:N said.
            torch.cuda.set_device(local_rank)
            chosen, backend = torch.device("cuda", local_rank), "nccl"
        elif wanted.type == "cpu":
            chosen, backend = torch.device("cpu"), "gloo"
        else:
            raise PairSegInputError(f"distributed training runs on CUDA GPUs or on CPU, not {wanted.type}")
        initialized_here = False
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend=backend, timeout=_timeout())
            initialized_here = True
        if torch_dist.get_world_size() != world_size or torch_dist.get_rank() != rank:
            raise RuntimeError(f"process group (rank {torch_dist.get_rank()} of {torch_dist.get_world_size()}) "
                               f"differs from RANK={rank} WORLD_SIZE={world_size}")
        return cls(rank, world_size, local_rank, chosen, initialized_here)

    # -- model ---------------------------------------------------------------------------------

    def wrap(self, model: torch.nn.Module, sync_batchnorm: bool = False) -> torch.nn.Module:
        """The module the loop calls: DDP over ``model`` when distributed, else ``model``.

        ``sync_batchnorm`` converts ``model``'s BatchNorm layers in place to SyncBatchNorm
        (statistics over the global batch). PyTorch runs SyncBatchNorm on GPUs only; on CPU
        (gloo) it is refused with a clear error. DDP broadcasts rank 0's parameters and buffers
        when it wraps, so every rank starts from rank 0's weights whatever its own seed.
        """
        if not self.enabled:
            return model
        if sync_batchnorm:
            if self.device.type != "cuda":
                raise PairSegInputError("--sync-batchnorm needs CUDA GPUs (PyTorch's SyncBatchNorm does not run "
                                        "on CPU); without it each rank normalises with its own batch statistics")
            converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            if converted is not model:  # only when ``model`` itself is a BatchNorm layer
                raise PairSegInputError("--sync-batchnorm: the model must not be a bare BatchNorm layer")
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # -- collectives ---------------------------------------------------------------------------

    def gather_objects(self, value) -> list:
        """``value`` of every rank, in rank order (``[value]`` in a single process)."""
        if not self.enabled:
            return [value]
        gathered: list = [None] * self.world_size
        torch_dist.all_gather_object(gathered, value)
        return gathered

    def check_agreement(self, settings: dict) -> None:
        """Fail clearly, on every rank, when ranks were started with different data or settings.

        ``settings`` is a JSON-able dict (values that are not JSON become ``str``); the error names
        the keys in which a rank differs from rank 0.
        """
        if not self.enabled:
            return
        canonical = json.loads(json.dumps(settings, sort_keys=True, default=str))
        gathered = self.gather_objects(canonical)
        reference = gathered[0]
        problems = []
        for rank, other in enumerate(gathered[1:], start=1):
            keys = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
            if keys:
                problems.append(f"rank {rank}: {', '.join(keys)}")
        if problems:
            raise PairSegInputError("ranks disagree with rank 0 on training data or settings ("
                                    + "; ".join(problems) + "); start every rank with the same command "
                                    "and the same data")

    def any_flag(self, flag: bool) -> bool:
        """True on every rank when any rank raised ``flag`` (e.g. a stop request)."""
        if not self.enabled:
            return bool(flag)
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def reduce_step(self, loss: float, stop: bool) -> tuple[float, bool]:
        """(loss averaged over the ranks, whether any rank asked to stop), one all-reduce.

        A non-finite loss on any rank makes the average non-finite on every rank, so all ranks
        see the divergence at the same step.
        """
        if not self.enabled:
            return float(loss), bool(stop)
        value = torch.tensor([float(loss), 1.0 if stop else 0.0], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.SUM)
        total, stops = value.tolist()
        return (total / self.world_size if math.isfinite(total) else float("nan")), stops > 0

    def barrier(self) -> None:
        if self.enabled:
            # A tiny all-reduce rather than torch_dist.barrier(): it honours the process group
            # timeout on every backend and needs no device guess for NCCL.
            self.any_flag(False)

    def close(self) -> None:
        if self.initialized_here and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
            self.initialized_here = False

