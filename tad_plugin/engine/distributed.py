"""Several processes (GPUs, hosts) through PyTorch's own runtime: ``torch.distributed`` under ``torchrun``.

One process stays the default: every engine class takes ``ranks=None`` (or a one-process
:class:`Ranks`) and then behaves exactly as before. Under ``torchrun --nproc_per_node N`` (which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), :func:`init_from_env`
joins the process group (NCCL for CUDA, gloo for the CPU) and returns this process's :class:`Ranks`;
rank r then uses ``cuda:LOCAL_RANK`` (:func:`rank_device`).

How each stage is split, and why the result does not depend on the number of processes:

* **Experts** (:class:`~tad_plugin.engine.experts.ExpertTrainer`): the experts still to train are cut
  into the same groups of ``experts_per_group`` as in one process, and the groups are dealt out
  round-robin (group g to rank ``g % W``, :meth:`Ranks.share`). A group's whole run -- initialisation,
  shuffles, DSA, its optimiser (SGD, or FTD's / DATM's GSAM), the TAD division (``filter_dataset`` per
  expert, or one shared split per group) and the dual loop's anchors and recalibration -- depends only
  on the seeds of the group's own experts, so
  dealing groups to ranks changes nothing: the W-process store equals the one-process store bit for bit
  on the same kind of device. Each rank writes its own experts (atomic files), so a restarted job
  (``torchrun --max-restarts``) skips every finished expert; the list of experts to train is read by
  rank 0 and broadcast, so no rank sees a file another rank wrote meanwhile. (As in one process, the
  experts left are regrouped on resume, so a group that was saved only in part continues in another
  grouping, with other shuffles.) With fewer groups than ranks some ranks idle: use
  ``num_experts >= W * experts_per_group``.
* **Distillation** (:class:`~tad_plugin.engine.matching.TrajectoryMatcher`): every rank holds all
  synthetic images and replays the same random draws (expert, start epoch, batch, DSA); each inner step's
  minibatch of ``batch_syn`` images is cut into W contiguous slices (:meth:`Ranks.rows`) and rank r
  runs the student's forward and backward on slice r only, so the unrolled graph (the memory) is split
  W ways. The step's gradient is ``g = sum_r g_r`` with ``g_r = grad(inner_loss(slice r) * |slice r| / B)``
  (a mean loss over B samples is the sum of its slices' weighted means), summed by a differentiable
  all-reduce (:meth:`Ranks.sum`), so ``w_{k+1} = w_k - syn_lr * g`` is the same on every rank.
  Backward: every rank back-propagates ``loss / W``, and the all-reduce's backward is again a sum over
  ranks. Let a_k^(r) be the gradient reaching rank r's copy of w_k through rank r's own graph; the
  invariant is ``sum_r a_k^(r) = dL/dw_k``. It holds at the end (``a_N^(r) = dL/dw_N / W``), and in
  step k the all-reduce's backward hands every rank ``sum_r -syn_lr * a_{k+1}^(r) = -syn_lr * dL/dw_{k+1}``,
  the true gradient of g; so ``a_k^(r) = a_{k+1}^(r) + J_r^T (-syn_lr * dL/dw_{k+1})`` (J_r: the Jacobian
  of g_r in w_k), which sums over r to dL/dw_k again. Hence rank r's image (and soft-label) gradient
  holds the exact contributions of its slices (the steps' other rows add nothing), and its ``syn_lr``
  gradient its share of a sum: one all-reduce (sum) of the image, label and step-size gradients after ``backward``
  (:meth:`Ranks.sum_`) gives every rank the one-process gradients, up to the order of floating-point
  additions. DSA draws its per-sample parameters for the whole minibatch (so the draws match one
  process) and each rank keeps its slice of the augmented batch; a minibatch with fewer rows than ranks
  (the last, short one when ``batch_syn`` does not divide the images) leaves the later ranks an empty
  slice, which adds zero. All ranks start from rank 0's initial images and labels (broadcast; DATM picks
  them with the experts, where GPU rounding could otherwise choose differently) and hold the same student
  weights (an all-reduce hands every rank the same sum), hence the same matching loss: the adaptive
  length's closest step, the loss gate's skip (``loss_gate``) and the EMA images agree on every rank,
  and learned soft labels (with ``label_momentum``) get their summed gradient like the images. Every
  method's matching runs this way (the adapters subclass :class:`~tad_plugin.engine.pipeline.Pipeline`).
  Rounding differences can grow over many iterations at large ``lr_img`` (a ReLU input changing sign),
  as between two GPU models.
* **Evaluation** (:class:`~tad_plugin.engine.evaluate.Evaluator`): the K nets are dealt out
  round-robin; rank r trains its nets together (seeded by the evaluation seed and r) and the
  accuracies are gathered in net order. The protocol is the same; the individual draws (inits,
  shuffles, DSA) differ from a one-process evaluation, which trains all K nets from one generator.
  :meth:`~tad_plugin.engine.evaluate.Evaluator.run` returns each rank's own nets, so FTD's
  ``ema_eval_reuses_raw_net`` continues, on every rank, the nets that rank trained on the raw images.

Only rank 0 shows progress bars and writes run records, checkpoints and reports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .config import ConfigError

__all__ = ["Ranks", "init_from_env", "shutdown", "launched", "launched_rank", "current", "rank_device",
           "resolve_device"]

T = TypeVar("T")
_joined = False  # whether init_from_env initialised the process group


@dataclass(frozen=True)
class Ranks:
    """This process's place among W cooperating processes (one process: rank 0 of 1, no collectives).

    Attributes:
        rank: 0 .. world_size - 1, within ``group``.
        world_size: W >= 1, the size of ``group``.
        local_rank: the rank on this host (picks the GPU).
        group: the process group the collectives run in; None = the default (all processes).
            A subgroup (``torch.distributed.new_group``) lets some processes work while others wait.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside [0, world_size={self.world_size})")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes shared files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items, dealt round-robin: ``items[rank::world_size]``."""
        return list(items[self.rank::self.world_size])

    def rows(self, n: int) -> slice:
        """This rank's contiguous slice of ``n`` rows (sizes differ by at most one, lower ranks larger;
        with ``n < world_size`` the ranks from ``n`` on get empty slices)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable sum over ranks (a new tensor; its backward is again a sum over ranks)."""
        return _SumOverRanks.apply(x, self.group) if self.active else x

    def sum_(self, tensors: Sequence[torch.Tensor | None]) -> None:
        """In-place sum over ranks of each tensor (None entries skipped; every rank passes the same list)."""
        if self.active:
            for t in tensors:
                if t is not None:
                    dist.all_reduce(t, group=self.group)

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` (picklable) on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0 if self.group is None else dist.get_global_rank(self.group, 0),
                                   group=self.group)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank got here."""
        if self.active:
            dist.barrier(group=self.group)


class _SumOverRanks(torch.autograd.Function):
    """y = sum over ranks of x; the gradient of x is the sum over ranks of y's gradients. (PyTorch's
    ``torch.distributed.nn.functional.all_reduce`` does the same and is deprecated in recent releases; the
    functional collectives that replace it have no backward for all_reduce.)"""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _SumOverRanks.apply(grad, ctx.group), None


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or similar) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_rank() -> int:
    """This process's rank as the launcher set it (``RANK``; 0 without a launcher), before any group exists."""
    return int(os.environ.get("RANK", "0"))


def current() -> Ranks:
    """The :class:`Ranks` of the initialised process group, or one process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_from_env(device: str | torch.device | None = None) -> Ranks:
    """Join the process group ``torchrun`` describes in the environment; one process without it.

    Args:
        device: the run's device (``"cuda"``, ``"cpu"``, None = CUDA when available). NCCL is used for
            CUDA, gloo for the CPU; with CUDA the process's current device becomes ``cuda:LOCAL_RANK``.

    Returns:
        This process's :class:`Ranks` (the existing group's, if one is already initialised).
    """
    global _joined
    if not launched() or dist.is_initialized():
        return current()
    kind = resolve_device(device).type
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but this host has {torch.cuda.device_count()} GPU(s); "
                               f"use torchrun --nproc_per_node <= {torch.cuda.device_count()}")
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")
    _joined = True
    return current()


def shutdown() -> None:
    """Leave the process group :func:`init_from_env` joined (a group initialised elsewhere is kept)."""
    global _joined
    if _joined and dist.is_initialized():
        dist.destroy_process_group()
    _joined = False


def _parse_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {str(device)!r} is not a device name: use cpu, cuda or cuda:N") from exc


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device (None = CUDA when available, else the CPU).

    Raises:
        ConfigError: a string torch does not know as a device, or a CUDA device this machine does not have.
    """
    dev = _parse_device(device)
    if device is not None and dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(f"device {str(device)!r}: torch sees no CUDA GPU on this machine; run with --device "
                              f"cpu, or install a CUDA build of torch where a GPU is")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {str(device)!r}: this machine has {count} CUDA GPU(s), cuda:0 to "
                              f"cuda:{count - 1}; pick one of those")
    return dev


def rank_device(device: str | torch.device | None, ranks: Ranks) -> torch.device:
    """The device this rank runs on: ``"cuda"`` (or None with CUDA present) becomes ``cuda:LOCAL_RANK``
    when several processes run; the CPU is kept.

    Raises:
        ValueError: several processes and an explicit GPU other than ``cuda:LOCAL_RANK`` (they would share it).
        ConfigError: ``device`` is not a device name.
    """
    dev = _parse_device(device)
    if dev.type != "cuda" or not ranks.active:
        return dev
    if dev.index is not None and dev.index != ranks.local_rank:
        raise ValueError(f"device {dev} for process {ranks.rank} of {ranks.world_size}: under torchrun each process "
                         f"uses its own GPU, cuda:LOCAL_RANK; pass --device cuda (or set CUDA_VISIBLE_DEVICES)")
    return torch.device("cuda", ranks.local_rank)
