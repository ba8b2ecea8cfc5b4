"""Trajectory-matching distillation (MTT), written so FTD, DATM and ATT plug in.

One iteration (upstream ``distill.py``):

1. take the next expert trajectory (experts are consumed in a seeded random order, refilled when
   exhausted); draw ``t = randint(lo, hi)`` with an EXCLUSIVE upper bound (MTT: lo 0,
   hi ``max_start_epoch``; :meth:`TrajectoryMatcher.start_window` is the DATM hook);
   ``w_0 = theta_t`` and the target ``theta_{t+M}``, M = ``expert_epochs``;
2. unroll ``syn_steps`` plain SGD steps of a student ConvNet on the synthetic set,
   ``w_{k+1} = w_k - syn_lr * grad CE(student(DSA(x_batch); w_k), y_batch)`` with ``create_graph``;
   batches of ``batch_syn`` images drawn without replacement, refilled from a fresh permutation
   (all images every step when ``batch_syn`` is None);
3. loss = ``||w_N - theta_{t+M}||^2 / ||theta_t - theta_{t+M}||^2`` (ATT, ``adaptive_length``: w_k
   with the smallest distance to the target instead of w_N, ties to the later k, see
   :func:`closest_step`);
4. back-propagate into the images (SGD ``lr_img``, momentum 0.5) and the learnable step size
   ``syn_lr`` (initialised to ``lr_teacher``; SGD ``lr_lr``, momentum 0.5); optionally into soft
   labels (DATM, ``lr_labels``, momentum ``label_momentum``); DATM's ``loss_gate`` skips the update
   of an iteration whose loss exceeds it; optionally update an EMA copy of the images (FTD/ATT,
   ``ema_decay``).

The synthetic images live in model-input space (after the :class:`~tad_plugin.engine.preprocess.
Preprocessor`). Evaluation every ``eval_every`` iterations (and at the end) goes through an
:class:`~tad_plugin.engine.evaluate.Evaluator`; a checkpoint of everything needed to continue
(images, labels, syn_lr, optimiser states, EMA, RNG states, history) is written atomically every
``checkpoint_every`` iterations, and :meth:`TrajectoryMatcher.run` resumes from it. The step has no
host-device synchronisation (except DATM's ``loss_gate``); losses are read back every ``log_every``
iterations, where a NaN stops the run with an explanation; a ``syn_lr`` that dips to <= 0 is carried
on with (as upstream) and warned about, and stops the run only where it must be positive: at an
evaluation and at the end; a logged loss above :data:`UNSTABLE_LOSS` is warned about too.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor
from tqdm.auto import tqdm

from ..checks import check_hard_or_soft_labels, check_labels, is_flag, is_integer, short_classes
from ..errors import TADError
from ..files import atomic_torch_save, atomic_write_json, torch_load
from ..losses import confidence_penalty
from .convnet import ConvNetConfig, forward
from .distributed import Ranks
from .dsa import DEFAULT_STRATEGY, DSA
from .evaluate import Evaluator
from .student_grad import (
    COMPILE_MODES,
    INNER_GRADS,
    RECOMPUTE_STEPS,
    is_recompute_choice,
    student_grad,
    student_grad_recomputing_elementwise,
)

logger = logging.getLogger(__name__)

#: How the student's gradient is computed: memory and speed, the same values up to float rounding.
ROUTE_SETTINGS = frozenset({"inner_grad", "recompute_steps", "compile_mode", "cudnn_benchmark", "channels_last"})

#: Settings a checkpoint may be resumed with changed: the run length and how often it evaluates, saves and
#: reads back, and the gradient route (:data:`ROUTE_SETTINGS`: e.g. one of less memory on a smaller GPU) --
#: nothing the images' path depends on, so a finished run extended to more iterations continues as a run
#: started with that many would have.
EXTENDABLE = frozenset({"iterations", "eval_every", "checkpoint_every", "checkpoint_seconds", "log_every"}
                       | ROUTE_SETTINGS)

#: Written beside the checkpoint after every evaluation: the list of evaluation entries so far (iteration,
#: syn_lr, eval {mean, std, accuracies, seconds} and eval_ema when EMA images are kept).
EVALUATIONS_FILE = "evaluations.json"

__all__ = ["MatchingConfig", "ROUTE_SETTINGS", "check_checkpoint", "read_checkpoint", "trajectory_fingerprint",
           "EVALUATIONS_FILE", "DistillResult", "TrajectoryMatcher", "real_init_indices", "class_labels",
           "DistillDivergedError", "step_distance", "closest_step", "soft_label_summary"]


#: A logged matching loss above this (normalised: 1 = the student ended as far from the target as it started)
#: is warned about once per episode: a diverging run (an exploding learned step size) climbs past it, stable
#: runs stay below 1.
UNSTABLE_LOSS = 1.5


class DistillDivergedError(TADError, FloatingPointError):
    """The matching loss became NaN/inf or the learned step size left (0, inf)."""


@dataclass(frozen=True)
class MatchingConfig:
    """Numbers of the distillation loop (MTT names; FTD/DATM/ATT extras default to off).

    Attributes:
        iterations: image updates (upstream ``Iteration``).
        syn_steps: unrolled student steps N per iteration.
        expert_epochs: M, the target is the snapshot M epochs after the start.
        max_start_epoch: start epochs are drawn from [min_start_epoch, max_start_epoch) (exclusive).
        min_start_epoch: lower end of the start window (0 in MTT).
        batch_syn: synthetic images per inner step; None = all of them.
        lr_img, lr_lr, lr_teacher: image lr, step-size lr, initial step size.
        momentum: of both optimisers (upstream 0.5).
        lr_labels: if set and the labels are soft logits, they are learned too (DATM), SGD with
            ``label_momentum`` (None = ``momentum``; DATM: 0.9).
        loss_gate: DATM's threshold: an iteration whose matching loss exceeds it updates nothing
            (one host read per iteration); None = always update.
        ema_decay: if set, keep an EMA of the images (FTD/ATT) and evaluate it as well, from fresh
            networks like the images themselves.
        ema_eval_reuses_raw_net: evaluate the EMA images by training further the networks that were
            just trained on the raw images (upstream FTD/ATT's ``evaluate_synset`` reuses ``net_eval``).
            Off by default because the EMA score then measures 2 x ``epochs`` of training, half of it
            on the raw images, not the EMA images under the protocol every other number uses; turn it
            on only to reproduce upstream's logged EMA accuracies.
        adaptive_length: ATT's closest-step matching.
        adaptive_distance: the distance that picks ATT's step: ``"l1"`` (upstream's code) or
            ``"squared_l2"`` (the paper's text); see :func:`step_distance`.
        dsa_strategy: augmentation in every inner step ("" / "none" disables it).
        eval_every: evaluate every so many iterations (and at the end); 0 = only at the end;
            the evaluator may also be None (no evaluation).
        checkpoint_every: iterations between checkpoints (0 = none, except the final one).
        checkpoint_seconds: also checkpoint after an iteration ending at least this many seconds after the last
            checkpoint (0 = by iteration count only). Default 60: a killed run loses at most about a minute
            however slow its iterations are, for one checkpoint write a minute.
        log_every: iterations between loss read-backs (progress bar, NaN check).
        seed: drives the expert order, start epochs, batches and DSA.
        channels_last: NHWC convolutions in the student (``inner_grad="autograd"`` only).
        inner_grad: how the student's gradient is taken in every inner step: ``"autograd"``
            (``torch.autograd.grad(..., create_graph=True)``, upstream's way: the final backward is a
            double backward), ``"explicit"`` (:func:`~tad_plugin.engine.student_grad.student_grad`, the
            ConvNet's backward written out as a forward function: same values, first-order autograd
            only) or ``"compiled"`` (that function under ``torch.compile``, which the double backward
            cannot be). ``benchmarks/benchmark_inner_grad.py`` compares the routes.
        recompute_steps: what the final backward recomputes of each inner step instead of keeping it
            (``torch.utils.checkpoint``). False: nothing (every step's graph is kept). True: the whole step
            from its inputs: memory of about one unrolled step instead of ``syn_steps`` of them, for one more
            student-gradient pass per step. ``"elementwise"``: keep the convolution and matrix-product
            outputs and recompute only the elementwise work around them: less memory than False, less
            arithmetic than True. Same values. Needs ``inner_grad`` "explicit" or "compiled" (the double
            backward does not recompute).
        compile_mode: ``torch.compile``'s mode for ``inner_grad="compiled"``: ``"default"``,
            ``"reduce-overhead"`` (the compiled graphs replayed as CUDA graphs: one launch instead of
            dozens per call, for a launch-bound iteration; the same images up to float rounding) or
            ``"max-autotune-no-cudagraphs"``. Ignored by the other routes; on a CPU all three compile alike.
        cudnn_benchmark: True: cuDNN's algorithm search (``torch.backends.cudnn.benchmark``) during each
            iteration, the process's setting restored after it: cuDNN times its convolution algorithms for each
            new shape once (in the first iterations) and keeps the fastest; the images may then differ between
            runs in float rounding. False leaves the process's setting as it is (torch's default is off: the
            same kernels every run). No effect on a CPU.

    Raises:
        ValueError: a setting out of its range or an unknown choice (the message names it), ``channels_last``
            or ``recompute_steps`` with a route that does not take it.
        TypeError: a count that is no integer (NumPy integers are taken, stored as ``int``), or a
            ``cudnn_benchmark`` that is no bool.
    """

    iterations: int = 5000
    syn_steps: int = 30
    expert_epochs: int = 2
    max_start_epoch: int = 20
    min_start_epoch: int = 0
    batch_syn: int | None = None
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_teacher: float = 0.01
    momentum: float = 0.5
    lr_labels: float | None = None
    label_momentum: float | None = None
    loss_gate: float | None = None
    ema_decay: float | None = None
    ema_eval_reuses_raw_net: bool = False
    adaptive_length: bool = False
    adaptive_distance: str = "l1"
    dsa_strategy: str = DEFAULT_STRATEGY
    eval_every: int = 100
    checkpoint_every: int = 100
    checkpoint_seconds: float = 60.0
    log_every: int = 10
    seed: int = 0
    channels_last: bool = False
    inner_grad: str = "autograd"
    recompute_steps: bool | str = False
    compile_mode: str = "default"
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        for name in ("iterations", "syn_steps", "expert_epochs", "max_start_epoch", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"MatchingConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.min_start_epoch < self.max_start_epoch:
            raise ValueError(f"need 0 <= min_start_epoch < max_start_epoch, got {self.min_start_epoch}, "
                             f"{self.max_start_epoch}")
        if self.batch_syn is not None and self.batch_syn < 1:
            raise ValueError(f"batch_syn must be >= 1 or None (all images), got {self.batch_syn}")
        for name in ("lr_img", "lr_lr", "lr_teacher"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MatchingConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}")
        if self.loss_gate is not None and not (math.isfinite(self.loss_gate) and self.loss_gate > 0):
            raise ValueError(f"loss_gate must be a finite number > 0 or None (always update), got {self.loss_gate}: "
                             f"at or below 0 every iteration would be gated and the images never change")
        for name in ("iterations", "syn_steps", "expert_epochs", "max_start_epoch", "min_start_epoch", "log_every",
                     "eval_every", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if not is_integer(value):
                raise TypeError(f"MatchingConfig.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # NumPy integers as Python ones (the checkpoint's config)
        if self.batch_syn is not None:
            if not is_integer(self.batch_syn):
                raise TypeError(f"MatchingConfig.batch_syn must be an integer or None, got {self.batch_syn!r}")
            object.__setattr__(self, "batch_syn", int(self.batch_syn))
        if self.eval_every < 0 or self.checkpoint_every < 0 or not self.checkpoint_seconds >= 0:
            raise ValueError("eval_every, checkpoint_every and checkpoint_seconds must be >= 0")
        if self.inner_grad not in INNER_GRADS:
            raise ValueError(f"inner_grad must be one of {INNER_GRADS}, got {self.inner_grad!r}")
        if self.inner_grad != "autograd" and self.channels_last:
            raise ValueError("channels_last applies to inner_grad='autograd' only")
        if not is_recompute_choice(self.recompute_steps):
            raise ValueError(f"recompute_steps must be one of {RECOMPUTE_STEPS}, got {self.recompute_steps!r}")
        if self.recompute_steps and self.inner_grad == "autograd":
            raise ValueError("recompute_steps needs inner_grad='explicit' or 'compiled'")
        if self.adaptive_distance not in _DISTANCES:
            raise ValueError(f"adaptive_distance must be one of {_DISTANCES}, got {self.adaptive_distance!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if not is_flag(self.cudnn_benchmark):
            raise TypeError(f"cudnn_benchmark must be True or False, got {self.cudnn_benchmark!r}")
        object.__setattr__(self, "cudnn_benchmark", bool(self.cudnn_benchmark))


#: The entries of a distillation checkpoint that resuming reads (``TrajectoryMatcher.state_dict`` writes them).
CHECKPOINT_KEYS = ("iteration", "config", "images", "labels", "syn_lr", "opt_img", "opt_lr", "gen", "dev_gen",
                   "order", "chunks", "losses", "history")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A distillation checkpoint's state (``TrajectoryMatcher.save`` wrote it), read safely.

    Raises:
        ValueError: the file does not read (a truncated copy, another format) or lacks a checkpoint's entries;
            the message names the file and says to delete it (the distillation then starts over).
    """
    try:
        state = torch_load(path, verify=True)
    except ValueError as exc:
        raise ValueError(f"cannot read distillation checkpoint {path}: {exc}; delete it to start the distillation "
                         f"over") from exc
    missing = [k for k in CHECKPOINT_KEYS if k not in state] if isinstance(state, dict) else list(CHECKPOINT_KEYS)
    if missing:
        raise ValueError(f"{path} is not a distillation checkpoint (no {', '.join(missing[:3])}); delete it to start "
                         f"the distillation over")
    return state


def trajectory_fingerprint(trajectories: Sequence[Tensor], num_params: int) -> list[list[float]]:
    """Which expert trajectories a distillation matches, as its checkpoint records them: per trajectory, in
    order, its shape and its first two initial and last two final parameters (exact values, the same on every
    device; experts differ in them). Reads each trajectory once.

    Raises:
        ValueError: a trajectory that is not [epochs + 1 >= 2, num_params].
    """
    out = []
    for i, t in enumerate(trajectories):
        if t.dim() != 2 or t.shape[0] < 2 or t.shape[1] != num_params:
            raise ValueError(f"trajectory {i} is {tuple(t.shape)}; each must be [epochs + 1 >= 2, {num_params}] (the "
                             f"parameters after each epoch of one expert)")
        out.append([*t.shape, *t[0, :2].tolist(), *t[-1, -2:].tolist()])
    return out


def check_checkpoint(path: str | os.PathLike[str] | None, state: dict[str, Any], config: MatchingConfig,
                     images_shape: Sequence[int], trajectories: list[list[float]] | None = None) -> None:
    """Raise ``ValueError`` unless the checkpoint ``state`` (read from ``path``) can be resumed by a run with
    ``config`` distilling images of ``images_shape`` from the trajectories of fingerprint ``trajectories``
    (:func:`trajectory_fingerprint`; None = not checked): settings other than :data:`EXTENDABLE` equal, the
    same trajectories, its iteration within ``config.iterations``.

    Raises:
        KeyError: ``state`` lacks an entry (not a distillation checkpoint).
    """
    theirs, ours = ({k: v for k, v in cfg.items() if k not in EXTENDABLE}
                    for cfg in (state["config"], dataclasses.asdict(config)))
    if tuple(state["images"].shape) != tuple(images_shape) or theirs != ours:
        changed = sorted(k for k in ours if theirs.get(k) != ours[k])
        raise ValueError(f"checkpoint {path} belongs to a different run (other images shape "
                         f"or settings: {changed}); delete it to start the distillation over, or write this run "
                         f"elsewhere (only {sorted(EXTENDABLE)} may change on resume)")
    recorded = state.get("trajectories")
    if trajectories is not None and recorded is not None and recorded != trajectories:
        raise ValueError(f"checkpoint {path} belongs to a distillation from other expert trajectories "
                         f"({len(recorded)} then, {len(trajectories)} now, or other experts); delete it to distil "
                         f"from these experts, or write this run elsewhere")
    if int(state["iteration"]) > config.iterations:
        raise ValueError(f"checkpoint {path} is at iteration {int(state['iteration'])}, beyond "
                         f"iterations={config.iterations}; raise iterations to at least that, or "
                         f"delete the checkpoint to start over")


def _student_grad_route(inner_grad: str, recompute_steps: bool | str, mode: str) -> Callable[..., Tensor] | None:
    """The student-gradient function of a route (None = autograd's double backward); with ``recompute_steps``
    "elementwise" the function carries its own selective recomputation."""
    if inner_grad == "autograd":
        return None
    elementwise = recompute_steps == "elementwise"
    if inner_grad == "explicit":
        return student_grad_recomputing_elementwise if elementwise else student_grad
    return _compiled_student_grad(mode, elementwise)


@functools.cache
def _compiled_student_grad(mode: str, elementwise: bool) -> Callable[..., Tensor]:
    """One ``torch.compile`` of the student gradient per process, mode and recomputation (it recompiles per
    input shape)."""
    fn = student_grad_recomputing_elementwise if elementwise else student_grad
    if elementwise:  # torch warns that a selective checkpoint must hold no in-place ops; student_grad has none
        logging.getLogger("torch._higher_order_ops.wrap").addFilter(lambda r: "context_fn" not in r.getMessage())
    return torch.compile(fn, dynamic=False, mode=None if mode == "default" else mode)


@dataclass
class DistillResult:
    """What a run produced. Tensors are on the CPU.

    Attributes:
        images: float [M, C, H, W] distilled images (model-input space).
        labels: int64 [M] or float logits [M, num_classes].
        syn_lr: the learned step size (use it as the evaluation lr).
        ema_images: the EMA images (None without ``ema_decay``).
        history: one dict per log point / evaluation (iteration, loss, syn_lr, eval results).
        best: the evaluation with the highest mean accuracy ({"iteration", "mean", "std", "which"}),
            None if nothing was evaluated.
        best_set: the distilled set of that evaluation, as upstream MTT's ``images_best.pt``: {"images"
            (float [M, C, H, W], the EMA images when ``best["which"]`` is "ema"), "labels" (as ``labels``),
            "syn_lr" (float)}; None if nothing was evaluated. Distillation can fall after its best point
            (a step size that keeps growing), so the last images are not always the ones to keep.
        seconds: wall seconds the distillation loop ran (its evaluations included), summed over every attempt
            of a resumed run; 0 where unknown (a set written before this was recorded).
        settings: the settings a saved set was made with (``save_distilled``'s), when it was read from a file;
            None for a fresh result.
    """

    images: Tensor
    labels: Tensor
    syn_lr: float
    ema_images: Tensor | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_set: dict[str, Any] | None = None
    seconds: float = 0.0
    settings: Any = None

    def best_result(self) -> DistillResult:
        """The best evaluation's set as a result of its own (images, labels, step size; no EMA), to evaluate or
        save. Raises ValueError when the run made no evaluation (``distill.eval_every`` 0)."""
        if self.best_set is None:
            raise ValueError("this distilled set has no best snapshot: its run made no evaluation during "
                             "distillation (set distill.eval_every > 0) or was written by a tad_plugin that did not "
                             "keep one, so only its final images exist")
        b = self.best_set
        return DistillResult(b["images"], b["labels"], float(b["syn_lr"]), history=self.history, best=self.best)


#: Above this share of the initial images left in the EMA images at the last iteration (``ema_decay **
#: iterations``), the matcher warns that the EMA evaluation measures the initialisation.
EMA_INIT_SHARE_WARNING = 0.5

_DISTANCES = ("l1", "squared_l2")


def step_distance(w: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
    """Distance of student parameters ``w`` to ``target`` (same shape), a 0-d tensor: ``"l1"`` =
    sum |w - target| (ATT's code), ``"squared_l2"`` = sum (w - target)^2 (ATT's paper)."""
    if kind == "l1":
        return (w - target).abs().sum()
    if kind == "squared_l2":
        return (w - target).pow(2).sum()
    raise ValueError(f"unknown distance {kind!r}; use one of {_DISTANCES}")


def closest_step(distances: Tensor) -> Tensor:
    """ATT's step choice: the index k of the smallest of ``distances`` [K] (distance after inner step
    k + 1), ties to the LATER k -- upstream's running minimum ``if best >= d: best, k = d, step``,
    here started at +inf so some step is always chosen. NaN distances are never chosen unless all
    are NaN (then the last step). Returns an int64 0-d tensor on the same device (no host read)."""
    if distances.dim() != 1 or distances.numel() == 0:
        raise ValueError(f"distances must be a non-empty vector, got shape {tuple(distances.shape)}")
    d = torch.nan_to_num(distances.float(), nan=float("inf"))
    return d.numel() - 1 - torch.argmin(d.flip(0))


def class_labels(num_classes: int, ipc: int) -> Tensor:
    """Hard labels of a class-major synthetic set: ``[0]*ipc + [1]*ipc + ...``, int64 [num_classes*ipc]."""
    return torch.arange(num_classes).repeat_interleave(ipc)


def real_init_indices(labels: Tensor, pool: Tensor, ipc: int, num_classes: int,
                      generator: torch.Generator | None = None) -> Tensor:
    """Indices of ``ipc`` random pool samples per class, class-major: int64 [num_classes * ipc].

    Args:
        labels: int64 [N], the CURRENT labels of the training set (after any relabelling), in [0, num_classes).
        pool: int64 [P] distinct indices into ``labels`` that may be used (TAD: the trusted indices; a bool mask
            converts with ``mask.nonzero().flatten()``).
        generator: a CPU generator (None = global RNG).

    Raises:
        ValueError: labels or pool of the wrong kind, repeated pool indices, or a class with fewer than ``ipc``
            pool samples (the message says which and what to do).
    """
    check_labels(labels, num_classes)
    if (not isinstance(pool, Tensor) or pool.dim() != 1 or pool.dtype == torch.bool or pool.is_floating_point()
            or pool.is_complex()):
        got = f"{pool.dtype} {tuple(pool.shape)}" if isinstance(pool, Tensor) else type(pool).__name__
        hint = " (a mask? give mask.nonzero().flatten())" if isinstance(pool, Tensor) and pool.dtype == torch.bool \
            else ""
        raise ValueError(f"pool must be int64 indices [P]{hint}, got {got}")
    pool = pool.long().cpu()  # int32 and other integer indices too
    if pool.numel() and (int(pool.min()) < 0 or int(pool.max()) >= labels.numel()):
        raise ValueError(f"pool indices must lie in [0, {labels.numel()})")
    if pool.unique().numel() != pool.numel():
        raise ValueError("pool holds repeated indices: the same image would initialise several synthetic images; "
                         "give each index once (pool.unique())")
    pool_labels = labels.cpu()[pool]
    listed = short_classes(pool_labels, num_classes, ipc)
    if listed:
        raise ValueError(f"real initialisation needs {ipc} samples per class in the pool, but {listed}; "
                         f"lower distill.ipc, let more samples in (TAD: a lower distill.init_consensus), or "
                         f"initialise from noise (distill.pix_init=noise)")
    out = []
    for c in range(num_classes):
        members = pool[pool_labels == c]
        out.append(members[torch.randperm(members.numel(), generator=generator)[:ipc]])
    return torch.cat(out)


def soft_label_summary(labels: Tensor) -> dict[str, float]:
    """How peaked soft labels are: ``{"mean_max_prob", "mean_entropy"}`` (nats) of ``softmax(labels)``, float
    logits [M, C]. One-hot-like labels give ~1 and ~0; DATM's soft labels exist for the class similarities
    in between."""
    logits = labels.float()
    return {"mean_max_prob": round(float(logits.softmax(1).max(1).values.mean()), 4),
            "mean_entropy": round(-float(confidence_penalty(logits)), 4)}  # the penalty is minus the mean entropy


class TrajectoryMatcher:
    """The MTT distillation loop over a set of expert trajectories.

    Args:
        net: the student's shape (the experts' network).
        config: loop settings.
        trajectories: one float tensor [epochs + 1, P] per expert (any device; rows are copied to
            ``device`` when used), e.g. the experts helper's lazy storage; each [epochs + 1, P] with epochs >=
            ``max_start_epoch + expert_epochs - 1`` (checked when a trajectory is drawn; with a checkpoint, each
            is also read once at construction, its shape checked, for the checkpoint's record of the experts).
        images: float [M, C, H, W] initial synthetic images (model-input space), e.g.
            ``preprocess(train_images[real_init_indices(...)])``.
        labels: int64 [M] hard labels or float [M, num_classes] soft logits.
        evaluator: evaluates (images, labels, syn_lr); None = no evaluation.
        checkpoint: path of the resumable checkpoint (None = no checkpoints); with an evaluator,
            ``EVALUATIONS_FILE`` beside it holds the evaluations so far.
        device: where to run (default: the images' device).
        ranks: several processes split every inner step's minibatch (exact; see
            :mod:`tad_plugin.engine.distributed`); each must pass the same arguments. None = one process.
            Only rank 0 shows progress and writes the checkpoint.
        progress: show a progress bar.

    Raises:
        ValueError: no trajectories (or, with a checkpoint, one of the wrong shape), no images, images not
            float [M, C, H, W] of ``net``'s shape, or labels that are neither int64 [M] in [0, num_classes) nor
            float [M, num_classes]; later, from :meth:`run`, a checkpoint of another run or of other experts, or
            a trajectory too short for the start window.
    """

    def __init__(self, net: ConvNetConfig, config: MatchingConfig, trajectories: Sequence[Tensor],
                 images: Tensor, labels: Tensor, *, evaluator: Evaluator | None = None,
                 checkpoint: str | os.PathLike[str] | None = None, device: torch.device | str | None = None,
                 progress: bool = True, ranks: Ranks | None = None) -> None:
        if len(trajectories) == 0:
            raise ValueError("no expert trajectories given; train experts first")
        if isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[0] == 0:
            raise ValueError("no synthetic images given (images has 0 rows): initialise at least one per class")
        if images.dim() != 4 or not images.is_floating_point() or tuple(images.shape[1:]) != (
                net.in_channels, *net.image_size):
            raise ValueError(f"images must be float [M, {net.in_channels}, {net.image_size[0]}, "
                             f"{net.image_size[1]}], got {images.dtype} {tuple(images.shape)}")
        check_hard_or_soft_labels(labels, images.shape[0], net.num_classes)
        self.net, self.config, self.trajectories = net, config, trajectories
        # what a checkpoint records of the experts (each trajectory read once, only when there is a checkpoint)
        self._fingerprint = None if checkpoint is None else trajectory_fingerprint(trajectories, net.num_params)
        self._seconds: float = 0.0  # run()'s seconds in earlier attempts (restored from the checkpoint)
        self._since: float | None = None  # when this attempt's run() began (perf_counter)
        self.device = torch.device(device) if device is not None else images.device
        self.ranks = ranks or Ranks()
        self.evaluator, self.progress = evaluator, progress and self.ranks.is_main
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        c = config
        self.images = images.detach().to(self.device).clone().requires_grad_()
        self.soft = labels.is_floating_point()
        self.labels = labels.detach().to(self.device).clone()
        lr_labels = c.lr_labels if self.soft else None  # soft labels are learned only with lr_labels
        if lr_labels is not None:
            self.labels.requires_grad_()
        self.syn_lr = torch.tensor(float(c.lr_teacher), device=self.device, requires_grad=True)
        self._student_grad_fn = _student_grad_route(c.inner_grad, c.recompute_steps, c.compile_mode)
        # CUDA-graph replays reuse their output buffers: each iteration starts a new generation of them
        self._graphs = c.inner_grad == "compiled" and c.compile_mode == "reduce-overhead"
        self.opt_img = torch.optim.SGD([self.images], lr=c.lr_img, momentum=c.momentum)
        self.opt_lr = torch.optim.SGD([self.syn_lr], lr=c.lr_lr, momentum=c.momentum)
        label_momentum = c.momentum if c.label_momentum is None else c.label_momentum
        self.opt_labels = (torch.optim.SGD([self.labels], lr=lr_labels, momentum=label_momentum)
                           if lr_labels is not None else None)
        self.gated = 0  # iterations whose update the loss gate skipped
        self._negative_lr_warned = False
        self._unstable_warned = False
        self.ema = self.images.detach().clone() if c.ema_decay is not None else None
        if c.ema_decay is not None and c.ema_decay ** c.iterations > EMA_INIT_SHARE_WARNING:
            logger.warning("distill.ema_decay=%g over %d iterations leaves %.0f%% of the initial images in the EMA "
                           "images (decay ** iterations; no bias correction, as upstream's ModelEmaV2): their "
                           "accuracy measures the initialisation more than the distillation. Run longer (upstream "
                           "FTD / ATT run tens of thousands of iterations) or lower ema_decay", c.ema_decay,
                           c.iterations, 100 * c.ema_decay ** c.iterations)
        self.gen = torch.Generator().manual_seed(c.seed)  # expert order, start epochs
        self.dev_gen = torch.Generator(device=self.device).manual_seed(c.seed + 2)  # batches
        self.dsa = DSA(c.dsa_strategy, seed=c.seed + 4, device=self.device) if c.dsa_strategy not in ("", "none") \
            else None
        self.iteration = 0
        # soft labels (DATM): how peaked they start, kept in the history (and so in the run record)
        self.history: list[dict[str, Any]] = (
            [{"iteration": 0, "initial_soft_labels": soft_label_summary(self.labels.detach())}] if self.soft else [])
        self._best: dict[str, Any] | None = None  # see _keep_if_best
        self._order: list[int] = []
        self._chunks: list[Tensor] = []
        self._losses = torch.zeros(c.iterations, device=self.device)

    # ---- hooks for FTD / DATM / ATT ------------------------------------------------------------------

    def start_window(self, iteration: int) -> tuple[int, int]:
        """[lo, hi) of the start epoch at ``iteration`` (MTT: fixed; DATM widens it over time)."""
        return self.config.min_start_epoch, self.config.max_start_epoch

    def inner_target(self, labels: Tensor) -> Tensor:
        """The student's cross-entropy target: hard labels as they are, soft label logits as softmax."""
        return labels.softmax(-1) if self.soft else labels

    def inner_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The student's training loss: CE on hard labels, CE against softmax(logits) on soft ones."""
        return F.cross_entropy(logits, self.inner_target(labels))

    # ---- the loop ------------------------------------------------------------------------------------

    def _next_trajectory(self) -> Tensor:
        if not self._order:
            self._order = torch.randperm(len(self.trajectories), generator=self.gen).tolist()
        return self.trajectories[self._order.pop(0)]

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        m, b = self.images.shape[0], self.config.batch_syn
        if b is None or b >= m:
            return self.images, self.labels
        if not self._chunks:
            self._chunks = list(torch.randperm(m, generator=self.dev_gen, device=self.device).split(b))
        idx = self._chunks.pop()
        return self.images[idx], self.labels[idx]

    def step(self) -> Tensor:
        """One iteration (image/step-size update); returns the matching loss as a 0-d device tensor."""
        if not self.config.cudnn_benchmark:
            return self._step()
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            return self._step()
        finally:
            torch.backends.cudnn.benchmark = before

    def _step(self) -> Tensor:
        c, it = self.config, self.iteration
        if self._graphs:
            torch.compiler.cudagraph_mark_step_begin()
        traj = self._next_trajectory()
        lo, hi = self.start_window(it)
        need = hi - 1 + c.expert_epochs
        if traj.dim() != 2 or traj.shape[1] != self.net.num_params or traj.shape[0] <= need:
            raise ValueError(f"a trajectory must be [epochs + 1 > {need}, {self.net.num_params}] for start "
                             f"epochs < {hi} and expert_epochs {c.expert_epochs}, got {tuple(traj.shape)}; "
                             f"lower max_start_epoch / expert_epochs or train longer experts")
        start = int(torch.randint(lo, hi, (1,), generator=self.gen))
        # copy=True: a row of a [epochs + 1, P] trajectory already on the device would otherwise be a view,
        # and P is rarely a multiple of 4 (ConvNet's last bias adds num_classes), so odd rows start 8 bytes
        # off the 16-byte alignment the compiled inner step assumes: CUDA "misaligned address" on an H100
        # (the dual loop's anchors, matched from the experts' live trajectories at start epoch 1)
        w0 = traj[start].to(self.device, self.images.dtype, non_blocking=True, copy=True).unsqueeze(0).requires_grad_()
        target = traj[start + c.expert_epochs].to(self.device, self.images.dtype, non_blocking=True,
                                                  copy=True).unsqueeze(0)
        w = w0
        steps, dists = [], []
        for _ in range(c.syn_steps):
            x, y = self._next_batch()
            if self.dsa is not None:
                x = self.dsa(x)
            w = w - self.syn_lr * self._student_grad(w, x, y)
            if c.adaptive_length:
                steps.append(w)
                with torch.no_grad():
                    dists.append(step_distance(w, target, c.adaptive_distance))
        if c.adaptive_length:
            k = closest_step(torch.stack(dists))
            w = torch.stack(steps).index_select(0, k.view(1))[0]
        loss = (w - target).pow(2).sum() / (w0.detach() - target).pow(2).sum()
        self.opt_img.zero_grad(set_to_none=True)
        self.opt_lr.zero_grad(set_to_none=True)
        if self.opt_labels is not None:
            self.opt_labels.zero_grad(set_to_none=True)
        (loss / self.ranks.world_size).backward()
        self.ranks.sum_([self.images.grad, self.syn_lr.grad, self.labels.grad])
        # every rank holds the same loss (its w is the all-reduced sum), so all ranks gate alike
        if c.loss_gate is None or float(loss.detach()) <= c.loss_gate:
            self.opt_img.step()
            self.opt_lr.step()
            if self.opt_labels is not None:
                self.opt_labels.step()
        else:
            self.gated += 1
        if self.ema is not None:
            assert c.ema_decay is not None  # the EMA images exist only with ema_decay
            with torch.no_grad():
                self.ema.mul_(c.ema_decay).add_(self.images.detach(), alpha=1 - c.ema_decay)
        self._losses[it] = loss.detach()
        self.iteration += 1
        return loss.detach()

    def _student_grad(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """The inner loss's gradient at ``w`` [1, P] on the (augmented) batch ``x``, ``y``, with its graph;
        with several ranks each takes its slice of the batch and the slices' gradients are summed (exact
        because :meth:`inner_loss` is a mean over the batch's samples)."""
        part = self.ranks.rows(x.shape[0])
        if part.start == part.stop:  # fewer rows than ranks (a last, short minibatch): nothing to add, but
            return self.ranks.sum(w * 0)  # the sum and its backward must still run on every rank
        # with several ranks, the batch mean = the sum of the slices' shares
        share = (part.stop - part.start) / x.shape[0] if self.ranks.active else 1.0
        if self._student_grad_fn is not None:
            target = self.inner_target(y[part])
            if self.config.recompute_steps is True:  # "elementwise" recomputes inside the function
                g = torch.utils.checkpoint.checkpoint(self._student_grad_fn, self.net, w, x[part], target, share,
                                                      use_reentrant=False)
            else:
                g = self._student_grad_fn(self.net, w, x[part], target, share)
            return self.ranks.sum(g)
        logits = forward(self.net, w, x[part].unsqueeze(0), channels_last=self.config.channels_last)[0]
        loss = self.inner_loss(logits, y[part])
        if share != 1.0:
            loss = loss * share
        (g,) = torch.autograd.grad(loss, w, create_graph=True)
        return self.ranks.sum(g)

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the current images (and the EMA images) with the evaluator; appends to history."""
        assert self.evaluator is not None
        lr = self._positive_step_size("evaluating")
        raw, nets = self.evaluator.run(self.images.detach(), self.labels.detach(), lr)
        entry: dict[str, Any] = {"iteration": self.iteration, "syn_lr": lr, "eval": raw.as_dict()}
        if self.ema is not None:
            init = nets if self.config.ema_eval_reuses_raw_net else None
            entry["eval_ema"] = self.evaluator.run(self.ema, self.labels.detach(), lr, init=init)[0].as_dict()
        self.history.append(entry)
        self._keep_if_best(entry)
        if self.ranks.is_main:
            self._report_evaluation(entry)
        return entry

    def _keep_if_best(self, entry: dict[str, Any]) -> None:
        """Remember the evaluation (and keep a CPU copy of its set) when it beats every earlier one: the raw
        images, then the EMA images; ties keep the earlier."""
        for which, images in (("eval", self.images), ("eval_ema", self.ema)):
            if which in entry and (self._best is None or entry[which]["mean"] > self._best["mean"]):
                assert images is not None  # "eval_ema" is in entry only with EMA images
                self._best = {"iteration": entry["iteration"], "mean": entry[which]["mean"],
                              "std": entry[which]["std"], "which": "ema" if which == "eval_ema" else "images",
                              "images": images.detach().to("cpu", copy=True),
                              "labels": self.labels.detach().to("cpu", copy=True),
                              "syn_lr": entry["syn_lr"]}

    def _report_evaluation(self, entry: dict[str, Any]) -> None:
        """One log line per evaluation, and, with a checkpoint, ``evaluations.json`` beside it: every
        evaluation so far, rewritten atomically after each, so a run stopped between checkpoints (killed,
        timed out, its machine lost) still leaves its accuracy curve in a file anyone can read."""
        ev = entry["eval"]
        line = (f"iteration {entry['iteration']}: test accuracy {100 * ev['mean']:.2f} +- {100 * ev['std']:.2f}% "
                f"({len(ev['accuracies'])} nets, syn_lr {entry['syn_lr']:.3g})")
        if "eval_ema" in entry:
            line += f"; EMA images {100 * entry['eval_ema']['mean']:.2f} +- {100 * entry['eval_ema']['std']:.2f}%"
        if self.progress:
            tqdm.write(line)
        else:
            logger.info(line)
        if self.checkpoint is not None:
            atomic_write_json([h for h in self.history if "eval" in h], self.checkpoint.parent / EVALUATIONS_FILE)

    def _log(self, bar: Any) -> None:
        it, c = self.iteration, self.config
        lo = max(0, it - c.log_every)
        window = self._losses[lo:it]
        loss = float(window.mean()) if window.numel() else float("nan")
        lr = float(self.syn_lr.detach())
        if not (math.isfinite(loss) and math.isfinite(lr)):
            raise DistillDivergedError(
                f"distillation diverged at iteration {it}: matching loss {loss}, syn_lr {lr}. Lower lr_img "
                f"and/or lr_lr (or max_start_epoch), or resume from the last checkpoint with smaller rates")
        if lr <= 0 and not self._negative_lr_warned:  # upstream carries on; it may come back (see evaluate)
            logger.warning("the learned step size syn_lr is %.3g <= 0 at iteration %d (matching loss %.4f); "
                           "distillation continues as upstream's does, but an evaluation needs it positive "
                           "again (if it stays <= 0: lower lr_lr)", lr, it, loss)
        self._negative_lr_warned = lr <= 0
        if loss > UNSTABLE_LOSS and not self._unstable_warned:
            logger.warning("the matching loss is %.3g at iteration %d (syn_lr %.3g): the student ends farther from "
                           "the expert's target than it started, the unstable regime of MTT's exploding syn_lr "
                           "(upstream issues #6, #16, #24); if the next evaluation drops, lower lr_teacher, lr_lr "
                           "or lr_img and resume from a checkpoint before iteration %d", loss, it, lr, it)
        self._unstable_warned = loss > UNSTABLE_LOSS
        self.history.append({"iteration": it, "loss": loss, "syn_lr": lr,
                             **({"gated": self.gated} if c.loss_gate is not None else {})})
        bar.set_postfix(loss=f"{loss:.4f}", syn_lr=f"{lr:.2e}")

    def run(self) -> DistillResult:
        """Run (or resume) to ``config.iterations``; returns the result, whose state is also saved at the
        checkpoint (when there is one) as the run ends.

        Raises:
            DistillDivergedError: a non-finite matching loss, or a learned step size that is not positive.
        """
        c = self.config
        saved_at = -1  # the iteration of the state last saved at the checkpoint
        if self.checkpoint is not None and self.checkpoint.exists():
            self.load_state_dict(read_checkpoint(self.checkpoint))
            saved_at = self.iteration
        self._since = time.perf_counter()
        bar = tqdm(total=c.iterations, initial=self.iteration, desc="distill", disable=not self.progress)
        saved = time.monotonic()
        with bar:
            while self.iteration < c.iterations:
                if self.evaluator is not None and c.eval_every and self.iteration % c.eval_every == 0 and not any(
                        h.get("iteration") == self.iteration and "eval" in h for h in self.history):
                    self.evaluate()
                self.step()
                bar.update(1)
                if self.iteration % c.log_every == 0 or self.iteration == c.iterations:
                    self._log(bar)
                if self.checkpoint is not None and (
                        c.checkpoint_every and self.iteration % c.checkpoint_every == 0
                        or c.checkpoint_seconds and time.monotonic() - saved >= c.checkpoint_seconds):
                    self.save(self.checkpoint)
                    saved, saved_at = time.monotonic(), self.iteration
        if self.evaluator is not None and not any(h.get("iteration") == c.iterations and "eval" in h
                                                  for h in self.history):
            self.evaluate()
            saved_at = -1  # the final evaluation is part of the state
        if self.checkpoint is not None and saved_at != self.iteration:
            self.save(self.checkpoint)
        self._seconds, self._since = self.elapsed(), None
        self.ranks.barrier()  # rank 0's last checkpoint is written before any rank moves on
        self._positive_step_size("finishing")
        return self.result()

    def _positive_step_size(self, when: str) -> float:
        """The learned step size, which evaluation trains with; a clear error when it is not positive."""
        lr = float(self.syn_lr.detach())
        if not (math.isfinite(lr) and lr > 0):
            raise DistillDivergedError(
                f"the learned step size syn_lr is {lr:.4g} when {when} at iteration {self.iteration}: evaluation "
                f"trains with it, so it must be > 0. Lower lr_lr (and/or lr_img), or resume from the last "
                f"checkpoint with smaller rates")
        return lr

    def result(self) -> DistillResult:
        best = best_set = None
        if self._best is not None:
            best = {k: self._best[k] for k in ("iteration", "mean", "std", "which")}
            best_set = {k: self._best[k] for k in ("images", "labels", "syn_lr")}
        return DistillResult(self.images.detach().cpu(), self.labels.detach().cpu(), float(self.syn_lr.detach()),
                             None if self.ema is None else self.ema.cpu(), list(self.history), best, best_set,
                             self.elapsed())

    def elapsed(self) -> float:
        """Wall seconds spent in :meth:`run` so far, earlier attempts (restored from the checkpoint) included."""
        return self._seconds + (0.0 if self._since is None else time.perf_counter() - self._since)

    # ---- checkpointing -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit (tensors on the CPU; weights_only-loadable)."""
        return {"iteration": self.iteration, "config": dataclasses.asdict(self.config),
                "images": self.images.detach().cpu(), "labels": self.labels.detach().cpu(),
                "syn_lr": self.syn_lr.detach().cpu(), "opt_img": self.opt_img.state_dict(),
                "opt_lr": self.opt_lr.state_dict(),
                "opt_labels": None if self.opt_labels is None else self.opt_labels.state_dict(),
                "ema": None if self.ema is None else self.ema.cpu(), "gen": self.gen.get_state(),
                "dev_gen": self.dev_gen.get_state(), "dsa": None if self.dsa is None else self.dsa.state_dict(),
                "order": list(self._order), "chunks": [ch.cpu() for ch in self._chunks],
                "losses": self._losses.cpu(), "history": self.history, "gated": self.gated, "best": self._best,
                "trajectories": self._fingerprint, "seconds": self.elapsed(),
                "evaluator_calls": None if self.evaluator is None else self.evaluator.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; raises ValueError when it belongs to a different run (settings other
        than :data:`EXTENDABLE` differ) or is past ``iterations``. With more ``iterations`` than the checkpoint's
        run had, :meth:`run` extends it."""
        try:
            check_checkpoint(self.checkpoint, state, self.config, tuple(self.images.shape), self._fingerprint)
            with torch.no_grad():
                self.images.copy_(state["images"])
                self.labels.copy_(state["labels"])
                self.syn_lr.copy_(state["syn_lr"])
            self.opt_img.load_state_dict(state["opt_img"])
            self.opt_lr.load_state_dict(state["opt_lr"])
            if self.opt_labels is not None:
                self.opt_labels.load_state_dict(state["opt_labels"])
            if self.ema is not None:
                self.ema.copy_(state["ema"])
            self.gen.set_state(state["gen"])
            self.dev_gen.set_state(state["dev_gen"])
            if self.dsa is not None:
                self.dsa.load_state_dict(state["dsa"])
            self._order = [int(i) for i in state["order"]]
            self._chunks = [ch.to(self.device) for ch in state["chunks"]]
            done = int(state["iteration"])  # a run extended to more iterations keeps its losses so far
            self._losses[:done].copy_(state["losses"][:done])
            self.history = list(state["history"])
            self._best = state.get("best")  # None in checkpoints written before the best set was kept
            self.gated = int(state.get("gated", 0))
            self._seconds = float(state.get("seconds", 0.0))  # 0 in checkpoints written before it was kept
            if self.evaluator is not None and state["evaluator_calls"] is not None:
                self.evaluator.calls = int(state["evaluator_calls"])
            self.iteration = int(state["iteration"])
        except KeyError as exc:
            raise ValueError(f"checkpoint {self.checkpoint} is not a distillation checkpoint (missing {exc})") \
                from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`state_dict` atomically (rank 0 only: the ranks' states are the same)."""
        if self.ranks.is_main:
            atomic_torch_save(self.state_dict(), path)
