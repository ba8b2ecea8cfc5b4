"""TAD's dual loop inside an upstream buffer script, as a replacement of its ``epoch`` function.

Upstream trains every expert epoch with ``epoch("train", dataloader=trainloader, net=teacher_net,
optimizer=..., criterion=criterion, args=args, aug=True, ...)``. :class:`TADEpoch` wraps that
function; for ``mode == "train"`` it

1. notices a new expert (a ``net`` object it has not seen; upstream builds one per expert) and counts
   the previous one's last trusted space and labels into the :class:`~.state.TrustState`;
2. asks the expert's :class:`~tad_plugin.trust_loop.TrustLoop` (E = 1; the schedule and its epoch convention
   are documented there) to run what is due before the epoch: for a division, one no-augmentation,
   eval-mode pass of ``net`` over the whole training set (``dataloader.dataset``'s ``images`` / ``labels``,
   upstream's ``TensorDataset``) gives the per-sample cross-entropies under the current labels; a
   recalibration gets its features and anchors as described in "Features and anchors" below;
3. calls the original ``epoch`` with ``dataloader`` replaced by a loader over the trusted samples with
   their current labels (same batch size, reshuffled every epoch, as upstream's; with ``tad.balance_classes``
   drawn class-balanced, as the engine's experts, from the first epoch on) and ``criterion``
   replaced by :class:`HookCriterion` (the trust loop's criterion: the ``expert_loss`` hook, TAD's CE + lambda *
   RCE), from the first epoch on, as the engine does (in the warm-up :class:`WarmupCriterion` when
   ``tad.warmup_confidence_penalty`` > 0). ``mode == "test"`` passes through untouched.

Features and anchors (``tad.features``, resolved by :func:`~.anchors.resolve_embedding`):

* **an extractor** (a ``tad features train`` file; the default when one exists at
  ``default_extractor_path`` for the dataset) -- the paper's inner loop: the features are the extractor's
  embeddings of upstream's raw training images, and the anchors are distilled as the engine's
  :class:`~tad_plugin.engine.dual_loop.DualLoop` distils them, by the same function
  (:func:`~tad_plugin.engine.dual_loop.distill_anchors`): the expert's parameters are recorded at its
  start and after each epoch up to ``tad.anchor_epoch`` (flat, in ``parameters()`` order -- upstream's
  ConvNet is the engine's, checked by :func:`~.anchors.convnet_config`); at ``tad.anchor_epoch``,
  ``tad.anchor_ipc`` images per class, initialised from the expert's trusted samples with their current
  labels (a class with too few trusted samples draws from all samples labelled so, logged), are
  matched to that early trajectory (start epoch 0 or 1, 2 expert epochs, ``tad.anchor_iterations``
  iterations, :class:`~tad_plugin.engine.dual_loop.DualLoopConfig`'s other settings) in upstream's
  model-input space, mapped back to [0, 1] pixels (inverse of upstream's ZCA, else of its
  normalisation) and embedded; once per expert, as the engine does once per group.
* **a fixed [N, D] file**, or **"expert"** (the expert's own penultimate activations, the input of its
  last ``nn.Linear``, from the division's eval pass) -- a SIMPLIFICATION, also the fallback when no
  extractor exists (logged) or when upstream's network is not the engine's ConvNet (logged): the anchors of
  class c are ``tad.anchor_ipc`` means of disjoint random chunks of the trusted samples labelled c -- they
  average to the trusted class mean, the role the distilled prototypes play, and their spread gives the
  class covariance its shape.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import (
    DataLoader,
    Sampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from ..engine.config import TADConfig
from ..engine.convnet import ConvNetConfig, flatten
from ..engine.dual_loop import DualLoopConfig, distill_anchors
from ..manager import TADHooks
from ..trust_loop import Schedule, TrustLoop, class_chunk_anchors, expert_criterion
from .anchors import Embedding, convnet_config, log
from .labels import Relabelled
from .state import TrustState

__all__ = ["HookCriterion", "TADEpoch", "class_chunk_anchors"]  # class_chunk_anchors: the trust loop's


class HookCriterion(nn.Module):
    """``criterion(logits, targets)`` -> the trust loop's criterion (:func:`~tad_plugin.trust_loop.expert_criterion`:
    the ``expert_loss`` hook's scalar; pure, so GSAM may call it twice)."""

    def __init__(self, hooks: TADHooks, penalty: float = 0.0) -> None:
        super().__init__()
        self.hooks = hooks
        self.loss = expert_criterion(hooks, penalty)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, targets.long())


class WarmupCriterion(HookCriterion):
    """The warm-up's criterion with ``tad.warmup_confidence_penalty`` = ``weight`` > 0: the ``expert_loss`` hook
    plus ``weight`` times :func:`~tad_plugin.losses.confidence_penalty` (as the engine's warm-up)."""

    def __init__(self, hooks: TADHooks, weight: float) -> None:
        super().__init__(hooks, weight)


class _Expert:
    """The expert being trained: its network, images, trust loop and early trajectory."""

    def __init__(self, net: nn.Module, images: torch.Tensor, loop: TrustLoop, convnet: ConvNetConfig | None) -> None:
        self.net, self.images, self.loop = net, images, loop
        self.epochs = 0  # train epochs finished
        self.divisions = 0
        self.convnet = convnet  # None: chunk-mean anchors
        self.snapshots: list[torch.Tensor] = []  # flat parameters after 0, 1, ... epochs (to anchor_epoch)
        self.anchors: tuple[torch.Tensor, torch.Tensor] | None = None


class TADEpoch:
    """The wrapped ``epoch`` (see the module docstring).

    Args:
        original: upstream's ``epoch`` function.
        hooks: the hook facade.
        tad: when to divide and recalibrate (``warmup_epochs``, ``recompute_every``, ``inner_loop``,
            ``anchor_epoch``, ``anchor_ipc``, ``recalibrate_every``, ``recall_once``, ``warmup_confidence_penalty``,
            ``balance_classes``).
        state_path: where the :class:`TrustState` (given by :meth:`start`) is saved, after each expert
            and by :meth:`finish`.
        batch_size: images per chunk of the per-sample loss pass.
        seed: seeds the anchors (their chunking, or their initialisation and distillation).
    """

    def __init__(self, original: Callable[..., Any], hooks: TADHooks, tad: TADConfig, state_path: Any,
                 batch_size: int = 1024, seed: int = 0) -> None:
        self.original, self.hooks, self.tad = original, hooks, tad
        self.signature = inspect.signature(original)
        for name in ("mode", "dataloader", "net", "criterion"):
            if name not in self.signature.parameters:
                raise TypeError(f"upstream epoch{self.signature} has no parameter {name!r}; tad wrap supports "
                                f"epoch(mode, dataloader, net, optimizer, criterion, args, aug, ...)")
        self.state: TrustState | None = None
        self.embedding = Embedding()
        self.state_path, self.batch_size, self.seed = state_path, batch_size, seed
        self.schedule = Schedule.of(tad)
        self.criterion = HookCriterion(hooks)
        self.warmup_criterion = (WarmupCriterion(hooks, tad.warmup_confidence_penalty)
                                 if tad.warmup_confidence_penalty > 0 else self.criterion)
        self.generator = torch.Generator().manual_seed(seed)
        self.expert: _Expert | None = None
        self.log: list[dict[str, Any]] = []  # one entry per division: expert, epoch, trusted, recalibrated

    def start(self, state: TrustState, embedding: Embedding | None = None) -> None:
        """Begin a run: ``state`` counts the finished experts (it holds the noisy and clean labels);
        ``embedding`` is what the inner loop embeds with (None = the expert's own activations)."""
        self.state, self.embedding = state, embedding or Embedding()

    def _started(self) -> TrustState:
        """The state :meth:`start` gave; a RuntimeError before it."""
        if self.state is None:
            raise RuntimeError("the wrapped epoch ran before the wrapped get_dataset: tad wrap supports scripts "
                               "that build their train set with the patched get_dataset first")
        return self.state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._started()  # refuses a call before start()
        bound = self.signature.bind(*args, **kwargs)
        a = bound.arguments
        if a["mode"] != "train":
            return self.original(*args, **kwargs)
        ex = self._expert(a["net"], a["dataloader"])
        if ex.convnet is not None and ex.epochs <= self.tad.anchor_epoch:
            ex.snapshots.append(flatten(ex.net).cpu())  # snapshot ex.epochs: the early trajectory
        if self.schedule.divides(ex.epochs):
            self._divide(ex)
        loader = a["dataloader"]
        if ex.divisions or self.tad.balance_classes:
            loader = DataLoader(Relabelled(_Images(ex.images), ex.loop.labels[0]), batch_size=loader.batch_size,
                                sampler=self._sampler(ex))
        penalised = self.schedule.penalty(ex.epochs) > 0  # the warm-up's confidence penalty
        a["dataloader"], a["criterion"] = loader, self.warmup_criterion if penalised else self.criterion
        out = self.original(*bound.args, **bound.kwargs)
        ex.epochs += 1
        return out

    def finish(self) -> None:
        """Count the last expert and save the state (call once the script has returned)."""
        self._close_expert()
        self._started().save(self.state_path)

    # ------------------------------------------------------------------
    def _sampler(self, ex: _Expert) -> Sampler[int]:
        """The expert's epoch order over its trusted samples: each once in a random order, or with
        ``tad.balance_classes`` as many draws with replacement, a sample's chance inversely proportional to
        the trusted count of its current label (the engine's draw; in the warm-up every sample is trusted; an
        empty trusted space never gets here: :meth:`_divide` refuses it)."""
        trusted = ex.loop.trusted[0]
        if not self.tad.balance_classes:
            return SubsetRandomSampler(torch.nonzero(trusted).flatten().tolist())
        # torch annotates weights as Sequence[float]; it takes any 1-D tensor (torch.as_tensor)
        return WeightedRandomSampler(ex.loop.weights()[0],  # type: ignore[arg-type]
                                     num_samples=int(trusted.sum()), replacement=True)

    def _expert(self, net: nn.Module, loader: Any) -> _Expert:
        if self.expert is not None and self.expert.net is net:
            return self.expert
        self._close_expert()
        state = self._started()
        state.save(self.state_path)
        ds = getattr(loader, "dataset", None)
        images, labels = getattr(ds, "images", None), getattr(ds, "labels", None)
        if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise TypeError("tad wrap needs the buffer's trainloader over upstream's TensorDataset (tensors .images "
                            f"and .labels); got {type(ds).__name__}")
        if labels.shape != state.noisy_labels.shape:
            raise ValueError(f"the trainloader holds {len(labels)} samples, get_dataset returned "
                             f"{len(state.noisy_labels)}; tad wrap supports scripts that train on all of "
                             "dst_train")
        convnet = None
        if self.embedding.embed is not None and self.tad.inner_loop:
            convnet, why = convnet_config(net, images)
            if convnet is None:
                log.warning("tad wrap: %s, so its trajectory cannot be matched; the anchors fall back to chunk "
                            "means of the trusted samples' features (the simplified inner loop)", why)
        loop = TrustLoop(self.hooks, self.schedule, labels.long().cpu(), state.label_votes.shape[1],
                         experts=[state.experts])
        self.expert = _Expert(net, images, loop, convnet)
        return self.expert

    def _close_expert(self) -> None:
        if self.expert is not None and self.expert.epochs:
            self._started().add_expert(self.expert.loop.trusted[0], self.expert.loop.labels[0])
        self.expert = None

    def _divide(self, ex: _Expert) -> None:
        """The trust loop's round before ``ex.epochs`` (a division, and a recalibration when due)."""
        state = self._started()
        k, loop = state.label_votes.shape[1], ex.loop
        fixed = self.embedding.features
        feats: list[torch.Tensor] = []

        def losses(back: int) -> torch.Tensor:  # loss_average is refused under tad wrap: back is 0
            want = fixed is None and self.schedule.recalibrates(ex.epochs)
            out, penultimate = self._pass(ex, features=want)
            feats.extend([] if penultimate is None else [penultimate])
            return out.unsqueeze(0)

        def features() -> torch.Tensor:
            return fixed if fixed is not None else feats[0]

        def anchors(lp: TrustLoop) -> tuple[torch.Tensor, torch.Tensor]:
            f = features()
            if ex.convnet is not None:
                if ex.anchors is None:
                    ex.anchors = self._distill_anchors(ex, k)
                return ex.anchors[0].to(f.device), ex.anchors[1].to(f.device)
            return class_chunk_anchors(f, lp.labels[0], lp.trusted[0], k, self.tad.anchor_ipc, self.generator)

        done = loop.before_epoch(ex.epochs, losses, features, anchors)
        ex.divisions += 1
        self.log.append({"expert": state.experts, "epoch": ex.epochs, "trusted": int(loop.trusted.sum()),
                         "recalibrated": done.recalibrated})

    def _distill_anchors(self, ex: _Expert, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's anchors from the expert's snapshots 0..anchor_epoch (see the module docstring)."""
        tad, expert = self.tad, self._started().experts
        assert ex.convnet is not None and self.embedding.embed is not None and self.embedding.to_unit is not None
        device = next(ex.net.parameters()).device
        default = DualLoopConfig().anchor_matching
        matching = dataclasses.replace(default, iterations=tad.anchor_iterations, seed=self.seed + expert,
                                       log_every=min(default.log_every, tad.anchor_iterations))
        early = [torch.stack(ex.snapshots[:tad.anchor_epoch + 1])]
        gen = torch.Generator().manual_seed(self.seed + 7919 * expert)
        labels, pool = ex.loop.labels[0], ex.loop.trusted[0].clone()
        short = torch.nonzero(torch.bincount(labels[pool], minlength=num_classes) < tad.anchor_ipc).flatten()
        if short.numel():  # rather than stopping the upstream run, as DualLoop would
            log.warning("tad wrap: expert %d: class(es) %s have fewer than tad.anchor_ipc=%d trusted samples; "
                        "their anchors start from any samples labelled so", expert, short.tolist(), tad.anchor_ipc)
            pool |= torch.isin(labels, short)
        return distill_anchors(ex.convnet, matching, early, labels, torch.nonzero(pool).flatten(),
                               tad.anchor_ipc, num_classes, lambda idx: ex.images[idx].to(device).float(),
                               self.embedding.to_unit, self.embedding.embed, generator=gen, device=device)

    def _pass(self, ex: _Expert, features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample CE (float [N], CPU) and, if ``features``, the penultimate features ([N, D], CPU) of
        the expert: eval mode, no augmentation, no gradient, one copy to the host at the end; the net's
        train/eval mode is restored."""
        net = ex.net
        device = next(net.parameters()).device
        captured: list[torch.Tensor] = []
        handle = None
        if features:
            head = [m for m in net.modules() if isinstance(m, nn.Linear)]
            if not head:
                raise TypeError(f"{type(net).__name__} has no nn.Linear head to take penultimate features from")
            handle = head[-1].register_forward_pre_hook(
                lambda _m, inp: captured.append(inp[0].detach().flatten(1).float()))
        was_training = net.training
        net.eval()
        losses = []
        try:
            with torch.no_grad():
                labels = ex.loop.labels[0]
                for i in range(0, len(labels), self.batch_size):
                    logits = net(ex.images[i:i + self.batch_size].to(device).float())
                    y = labels[i:i + self.batch_size].to(device)
                    losses.append(F.cross_entropy(logits.float(), y, reduction="none"))
        finally:
            if handle is not None:
                handle.remove()
            net.train(was_training)
        return torch.cat(losses).cpu(), (torch.cat(captured).cpu() if features else None)


class _Images:
    """Images only (items ``(image, None)``), for :class:`Relabelled` to attach labels to."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, None]:
        return self.images[i], None
