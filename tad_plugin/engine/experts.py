"""Expert training (the "buffer" stage) with TAD's hooks, several experts at once on the GPU.

What happens, per group of E experts trained together:

1. Each expert's initialisation is drawn from its own seed (derived from the run seed and the
   expert's index), so an expert's trajectory does not depend on which group it landed in.
2. Every epoch, each expert draws its own random order of its **trusted** indices (all indices
   during the warm-up, or when TAD is off): a fixed-size [E, S*B] index tensor built on the device
   with ``argsort`` of random keys, untrusted samples keyed last; no host round trip. An epoch is
   ``S_e = ceil(n_e / B)`` steps of exactly B samples; the last batch is topped up from the start of
   the same order (upstream's DataLoader uses a smaller last batch). When experts have trusted spaces
   of different sizes, the group runs ``max_e S_e`` steps and the experts that are done take no step
   (their update is masked), so every expert sees exactly one pass over its trusted space.
3. A step gathers the uint8 images on the device, preprocesses and DSA-augments them in one batch
   (``groups=E``: each expert its own augmentation parameters), runs the engine's batched
   ``forward`` over the flat parameters [E, P], takes the trust loop's criterion (``expert_loss`` hook when
   TAD is on, else cross-entropy) on the concatenated [E*B, C] logits times E (so each expert gets the
   gradient of its own batch mean), and applies SGD (momentum, weight decay) as tensor ops on
   [E, P] -- or, with ``buffer.optimizer = "gsam"`` (FTD, DATM), one :class:`~tad_plugin.engine.gsam.GSAM`
   step with per-expert norms (the criterion is evaluated twice, at w and at the perturbed w).
   In the warm-up epochs ``tad.warmup_confidence_penalty`` (w > 0) adds ``w`` times
   :func:`~tad_plugin.losses.confidence_penalty` of the same logits (off by default).
   Loss and accuracy accumulate on the device; no ``.item()`` inside the epoch.
4. After the epoch: one test pass (logging), a snapshot of the parameters, and the group's
   :class:`~tad_plugin.trust_loop.TrustLoop` (the schedule; its module docstring states the epoch convention)
   runs what is due. For a division, an indexed, no-augmentation, eval-mode pass over the whole training set (in the
   training forward's precision and layout: ``buffer.amp``, ``buffer.channels_last``, ``buffer.compile``)
   gives per-sample losses [E, N] for the current labels (with ``tad.loss_average`` K > 1: the mean of such
   passes over the last K parameter snapshots); ``filter_dataset`` turns them into the next epoch's trusted
   space (per expert -- through ``filter_dataset_batch``, all experts in one call, where the registered
   plugins implement it -- or one shared split from the losses averaged over the group); a recalibration
   takes its features and anchors from the :class:`~tad_plugin.engine.dual_loop.DualLoop`.
5. Then the epoch callback (``on_epoch``), if any, may change labels and trusted space.

The groups train one after the other, except while the dual loop's features are still to load (an extractor
training beside the run, ``tad.features_wait_s``): then every group trains up to its first recalibration before
any goes on, which gives the same experts.

Where the time goes: a :class:`~tad_plugin.engine.phases.PhaseClock` times each epoch's ``train`` (the steps and
the snapshot), ``test`` and, with TAD, ``trust loop`` (all of the trust loop's work between epochs), and inside
the trust loop the calls of its ``loss pass``, ``features`` (the first call waits for the extractor when it is still
training and embeds the training set) and ``anchors``; the rest of ``trust loop`` is the division and the
recalibration. The totals, summed over resumed calls, are written to the store's
:data:`~tad_plugin.engine.phases.PHASES_FILE` after each group (the first rank's groups when several processes
share them).

Which split: ``TADConfig.split = "per-expert"`` (default, faithful: every expert is a separate
buffer.py run with its own losses, GMM and trusted space) or ``"shared"`` (one GMM per group on the
mean loss of its experts; all experts of the group train on the same trusted space).

The criterion is called once per step on the concatenated [E*B, C] logits, so it must be a mean over
samples (the ``expert_loss`` contract); a criterion with batch-level statistics would couple experts.

Speed: ``benchmarks/benchmark_experts.py`` (TAD's added work per epoch, piece by piece:
``benchmarks/benchmark_tad_overhead.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checks import check_labels
from ..errors import TADError
from ..manager import TADHooks
from ..results import TrustSplit
from ..trust_loop import Schedule, TrustLoop, class_balanced_weights, mean_losses
from .config import BufferConfig, TADConfig
from .convnet import ConvNetConfig, forward, init_params
from .distributed import Ranks
from .dsa import DSA
from .gsam import GSAM
from .phases import PHASES_FILE, PhaseClock, load_phases
from .preprocess import Preprocessor
from .trajectories import ExpertRecord, TrajectoryStore

if TYPE_CHECKING:
    from .dual_loop import DualLoop

__all__ = [
    "EpochCallback",
    "EpochState",
    "ExpertError",
    "ExpertTrainer",
    "TrustUpdate",
    "class_balanced_weights",
    "expert_seed",
    "per_sample_losses",
    "per_sample_predictions",
    "recalibrate_experts",
    "snapshot_mean_losses",
]  # class_balanced_weights: the trust loop's, re-exported


class ExpertError(TADError, RuntimeError):
    """Expert training cannot go on (diverged, empty trusted space, bad callback result)."""


def expert_seed(run_seed: int, index: int) -> int:
    """The seed of expert ``index``'s initialisation: fixed by the run seed and the index alone."""
    return (int(run_seed) * 1_000_003 + int(index) * 7919 + 12345) % (2**63 - 1)


@dataclass
class EpochState:
    """What an epoch callback sees, after epoch ``epoch`` (0-based) of a group has finished.

    Attributes:
        epoch: the finished epoch; the next one is ``epoch + 1``.
        experts: the store indices of the E experts of this group.
        params: float [E, P] on the device; the experts' parameters now (read-only by convention).
        labels: int64 [E, N] on the device; the labels the next epoch will train on.
        trusted: bool [E, N] on the device; the trusted space the next epoch will train on.
        losses: float [E, N] or None; the per-sample losses (no augmentation, eval mode) under
            ``labels`` computed after this epoch, when a division was made.
        splits: the E :class:`TrustSplit` results of this epoch's division (one shared split is
            repeated E times), or None when no division was made.
        num_classes: C.
        snapshots: the group's parameter snapshots so far, each float [E, P] on the device: index t holds
            the parameters after t epochs (index 0 the initialisation; ``epoch + 2`` of them). The
            dual loop distils its anchors from these early snapshots. Read-only.
        predictions: int64 [E, N] or None; the experts' argmax classes from the same pass as ``losses``.
    """

    epoch: int
    experts: list[int]
    params: torch.Tensor
    labels: torch.Tensor
    trusted: torch.Tensor
    losses: torch.Tensor | None
    splits: list[TrustSplit] | None
    num_classes: int
    snapshots: Sequence[torch.Tensor] = ()
    predictions: torch.Tensor | None = None


@dataclass
class TrustUpdate:
    """A callback's answer: new labels and/or trusted space for the next epochs (None = unchanged).

    ``labels``: int64 [E, N]; ``trusted``: bool [E, N]; both on any device.
    """

    labels: torch.Tensor | None = None
    trusted: torch.Tensor | None = None


#: ``on_epoch(state) -> TrustUpdate | None``; None leaves labels and trusted space as they are.
EpochCallback = Callable[[EpochState], "TrustUpdate | None"]


def recalibrate_experts(hooks: TADHooks, features: torch.Tensor, state: EpochState, anchor_features: torch.Tensor,
                        anchor_labels: torch.Tensor) -> TrustUpdate:
    """Apply the ``recalibrate`` hook to every expert of ``state``'s group, for an :data:`EpochCallback` of
    one's own (the trainer's schedule does this itself: :meth:`tad_plugin.trust_loop.TrustLoop.recalibrate`).

    Args:
        features: float [N, D], the fixed features of the training samples; the hook runs on their device.
        anchor_features, anchor_labels: float [A, D] and int64 [A], the embedded anchors.

    Returns:
        The recalibrated labels [E, N] and trusted spaces [E, N] as a :class:`TrustUpdate`.
    """
    loop = TrustLoop(hooks, Schedule(), state.labels, state.num_classes, experts=state.experts)
    loop.update(trusted=state.trusted, epoch=state.epoch + 1)
    loop.recalibrate(state.epoch + 1, features, anchor_features, anchor_labels, predictions=state.predictions)
    return TrustUpdate(labels=loop.labels, trusted=loop.trusted)


def per_sample_losses(net: ConvNetConfig, params: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                      preprocess: Preprocessor | None, batch_size: int,
                      forward_fn: Callable[..., torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every sample under each expert: no augmentation, eval mode, no gradient.

    Args:
        params: float [E, P] on the device.
        images: uint8 [N, C, H, W] on the device, preprocessed chunk by chunk with ``preprocess``; or, with
            ``preprocess`` None, the model inputs themselves (float [N, C, H, W]).
        labels: int64 [E, N] (each expert's labels) or [N] (shared), on the device.
        batch_size: images per chunk.

    Returns:
        ``(losses, correct)``: float32 [E, N] per-sample CE and bool [E, N] (argmax == label).
    """
    losses, predictions = per_sample_predictions(net, params, images, labels, preprocess, batch_size, forward_fn)
    return losses, predictions == labels


def per_sample_predictions(net: ConvNetConfig, params: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                           preprocess: Preprocessor | None, batch_size: int,
                           forward_fn: Callable[..., torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`per_sample_losses`'s pass, returning ``(losses, predictions)``: float32 [E, N] per-sample CE and
    int64 [E, N] argmax classes (so agreement with any other labels needs no second pass)."""
    fwd = forward_fn or forward
    e = params.shape[0]
    n = images.shape[0]
    labels = labels.expand(e, n) if labels.dim() == 1 else labels
    losses = torch.empty(e, n, device=params.device)
    predictions = torch.empty(e, n, dtype=torch.int64, device=params.device)
    with torch.no_grad():
        for i in range(0, n, batch_size):
            x = images[i:i + batch_size]
            x = x if preprocess is None else preprocess(x)
            logits = fwd(net, params, x)  # one batch shared by the E networks
            y = labels[:, i:i + batch_size]
            k = logits.shape[-1]
            losses[:, i:i + batch_size] = F.cross_entropy(logits.reshape(-1, k).float(), y.reshape(-1),
                                                          reduction="none").view(e, -1)
            predictions[:, i:i + batch_size] = logits.argmax(-1)
    return losses, predictions


def snapshot_mean_losses(net: ConvNetConfig, snapshots: Sequence[torch.Tensor], images: torch.Tensor,
                         labels: torch.Tensor, preprocess: Preprocessor | None, batch_size: int,
                         forward_fn: Callable[..., torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`per_sample_predictions` averaged over parameter snapshots (``tad.loss_average``): each snapshot
    float [E, P], the last one the current parameters, all under the same ``labels``. Returns the mean
    per-sample losses float32 [E, N] and the last snapshot's predictions int64 [E, N] (one pass per snapshot)."""
    if not snapshots:
        raise ValueError("snapshot_mean_losses needs at least one parameter snapshot")
    losses, predictions = mean_losses(lambda back: per_sample_predictions(
        net, snapshots[-1 - back], images, labels, preprocess, batch_size, forward_fn), len(snapshots))
    assert predictions is not None
    return losses, predictions


class ExpertTrainer:
    """Trains experts into a :class:`TrajectoryStore`, E at a time, with or without TAD.

    Args:
        net: the ConvNet's config (channels, classes, image size, width, depth).
        preprocess: uint8 -> model input (mean/std or ZCA), already fitted.
        buffer: optimiser and schedule (:class:`BufferConfig`).
        tad: TAD settings, or None / ``tad.enabled=False`` for the noisy baseline (plain CE, all
            samples, no hook is called).
        hooks: the hook facade; None builds ``TADHooks()`` with TAD's defaults when TAD is on.
        device: where to train.
        on_epoch: optional :data:`EpochCallback`, called after every epoch but the last, after the trust loop
            (``state.experts`` names the group: groups can interleave, see the module docstring).
        dual_loop: the features and anchors of the recalibrations (the inner loop); None = divisions only.
        progress: show tqdm bars (rank 0 only).
        ranks: several processes share the groups (:mod:`tad_plugin.engine.distributed`); None = one.
    """

    def __init__(self, net: ConvNetConfig, preprocess: Preprocessor, buffer: BufferConfig,
                 tad: TADConfig | None = None, hooks: TADHooks | None = None,
                 device: torch.device | str = "cpu", on_epoch: EpochCallback | None = None,
                 progress: bool = True, ranks: Ranks | None = None, dual_loop: DualLoop | None = None) -> None:
        self.net = net
        self.preprocess = preprocess
        self.buffer = buffer
        self.tad = tad if tad is not None and tad.enabled else None
        self.hooks = hooks if hooks is not None or self.tad is None else TADHooks()
        self.device = torch.device(device)
        self.on_epoch = on_epoch
        self.dual_loop = dual_loop if self.tad is not None else None
        self.ranks = ranks or Ranks()
        self.progress = progress and self.ranks.is_main
        self._forward = forward
        if buffer.compile:
            self._forward = torch.compile(forward, dynamic=False)
        self._dsa_strategy = buffer.dsa_strategy if buffer.dsa else ""
        self._amp = buffer.amp and self.device.type == "cuda"

    def _eval_forward(self, net: ConvNetConfig, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The forward of the passes without augmentation (test pass, TAD's per-sample losses): the training's
        (compiled or not) in its memory layout (``buffer.channels_last``)."""
        return self._forward(net, params, x, channels_last=self.buffer.channels_last)

    def _eval_precision(self) -> torch.autocast:
        """The training forward's precision for the passes without augmentation: bf16 autocast with
        ``buffer.amp`` on CUDA, else float32 (the per-sample cross-entropy is taken in float32 either way)."""
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self._amp)

    # ------------------------------------------------------------------ public
    def train(self, store: TrajectoryStore, images: torch.Tensor, labels: torch.Tensor,
              test_images: torch.Tensor, test_labels: torch.Tensor, seed: int = 0,
              num_experts: int | None = None) -> list[int]:
        """Train the experts missing from ``store`` (resume) and save each as its group finishes.

        Args:
            store: the destination; its finished experts are skipped.
            images: uint8 [N, C, H, W] training images (any device; moved once).
            labels: int64 [N] training labels (possibly noisy), in [0, C).
            test_images: uint8 [M, C, H, W]; test_labels: int64 [M] (clean; logging only).
            seed: the run seed (expert inits, shuffling and DSA derive from it).
            num_experts: how many experts the store should hold; None = ``buffer.num_experts``.

        Returns:
            The indices trained by this call (ascending; with several ranks, by all of them: each rank
            trains the groups :meth:`Ranks.share` deals it, and all ranks return once all are saved).
        """
        k = self.net.num_classes
        _check_images(images, "images")
        _check_images(test_images, "test_images")
        check_labels(labels, k, "labels", n=images.shape[0])
        check_labels(test_labels, k, "test_labels", n=test_images.shape[0])
        if store.num_train != images.shape[0] or store.epochs != self.buffer.epochs:
            raise ExpertError(f"{store.root} was made for N={store.num_train}, epochs={store.epochs}; this run "
                              f"has N={images.shape[0]}, epochs={self.buffer.epochs}: use another --out")
        total = self.buffer.num_experts if num_experts is None else num_experts
        self.ranks.barrier()  # every rank has looked at the store before any writes to it
        done = set(self.ranks.broadcast(store.finished()))  # and all use rank 0's view of it
        todo = [i for i in range(total) if i not in done]
        if not todo:
            return []
        dev = self.device
        data = (self._inputs(images.to(dev)), labels.to(dev), self._inputs(test_images.to(dev)), test_labels.to(dev))
        g = self.buffer.experts_per_group
        # the groups of a fresh run (shuffling and augmentation are drawn per group): a group a kill left part-saved
        # is trained again whole, so a resumed run ends with the uninterrupted run's experts
        groups = [list(range(i, min(i + g, total))) for i in range(0, total, g)]
        groups = self.ranks.share([group for group in groups if not done.issuperset(group)])
        bar = tqdm(total=sum(map(len, groups)) * self.buffer.epochs, desc="experts", unit="ep",
                   disable=not self.progress, dynamic_ncols=True)
        listening = self.dual_loop.attached() if self.dual_loop is not None else contextlib.nullcontext()
        timing = store.root / PHASES_FILE
        clock = PhaseClock(dev, load_phases(timing))
        pause = self._warmups_first(len(groups))

        def save(records: list[ExpertRecord]) -> None:
            for record in records:
                if record.index not in done:
                    store.save_expert(record)
            if self.ranks.is_main:
                clock.save(timing)

        def advance(steps: Generator[None, None, list[ExpertRecord]]) -> bool:
            """Train a group to its pause (True) or to its end, saving its experts (False)."""
            try:
                next(steps)
                return True
            except StopIteration as end:
                save(end.value)
                return False

        try:
            with listening:  # the trust report follows the run
                paused = []
                for group in groups:
                    steps = self._train_group(group, *data, seed=seed, bar=bar, clock=clock, pause_before=pause)
                    if advance(steps):
                        paused.append(steps)
                for steps in paused:  # the features are needed from here on: each paused group to its end
                    advance(steps)
        finally:
            bar.close()
        self.ranks.barrier()  # every expert is saved before any rank reads the store
        return todo

    def _warmups_first(self, groups: int) -> int | None:
        """The epoch before which every group pauses until all groups got there, or None (groups one after the
        other): the first recalibration's, when the inner loop's features are still to be loaded (a SimCLR
        extractor training beside this run) and there are several groups. Their epochs before it need no
        features, so the extractor trains beside all of them instead of beside the first group alone; each
        group keeps its own state and random streams, so the experts are the same either way."""
        if groups < 2 or self.dual_loop is None or self.dual_loop.features_loaded or self.tad is None:
            return None
        schedule = Schedule.of(self.tad)
        return next((t for t in range(1, self.buffer.epochs) if schedule.recalibrates(t)), None)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        """What the training code indexes: the model inputs of ``images`` (uint8 [N, C, H, W]) computed once,
        float32 [N, C, H, W] (``buffer.cache_inputs``), or the uint8 images themselves (then every batch is
        preprocessed on use, see :meth:`_model_input`)."""
        if not self.buffer.cache_inputs:
            return images
        chunk = self.buffer.eval_batch_size
        with torch.no_grad():
            return torch.cat([self.preprocess(images[i:i + chunk]) for i in range(0, images.shape[0], chunk)])

    def _model_input(self, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The model inputs of the ``rows`` of :meth:`_inputs`'s result."""
        pre = self._preprocess_for(inputs)
        return inputs[rows] if pre is None else pre(inputs[rows])

    def _preprocess_for(self, inputs: torch.Tensor) -> Preprocessor | None:
        """``per_sample_losses``'s ``preprocess`` for :meth:`_inputs`'s result (None: already model inputs)."""
        return None if inputs.is_floating_point() else self.preprocess

    # ------------------------------------------------------------------ one group
    def _train_group(self, experts: list[int], images: torch.Tensor, labels: torch.Tensor,
                     test_images: torch.Tensor, test_labels: torch.Tensor, seed: int, bar: tqdm, clock: PhaseClock,
                     pause_before: int | None = None) -> Generator[None, None, list[ExpertRecord]]:
        """Train one group; a generator that returns its records. It yields once, before the trust loop's work
        before epoch ``pause_before`` (None: never), so the caller can train other groups up to there first."""
        cfg, buf, dev = self.net, self.buffer, self.device
        e, n, k, t_total = len(experts), images.shape[0], cfg.num_classes, buf.epochs
        seeds = [expert_seed(seed, i) for i in experts]
        # drawn on the CPU, so an expert's initialisation is the same on every device
        params = torch.cat([init_params(cfg, 1, torch.Generator().manual_seed(s)) for s in seeds]).to(dev)
        momentum_buf: torch.Tensor | GSAM | None = torch.zeros_like(params) if buf.momentum > 0 else None
        if buf.optimizer == "gsam":  # the optimiser owns the (leaf) parameters and the momentum
            params.requires_grad_(True)
            momentum_buf = GSAM([params], torch.optim.SGD, rho=buf.rho, alpha=buf.alpha, adaptive=True,
                                independent_rows=True, lr=buf.lr, momentum=buf.momentum,
                                weight_decay=buf.weight_decay)
        group_seed = expert_seed(seed, experts[0]) ^ 0x5EED
        gen = torch.Generator(device=dev).manual_seed(group_seed)
        dsa = DSA(self._dsa_strategy, seed=group_seed, device=dev) if self._dsa_strategy else None

        loop = TrustLoop(self.hooks if self.tad is not None else None, Schedule.of(self.tad),
                         labels.unsqueeze(0).expand(e, n), k, experts=experts)
        snapshots = [params.detach().clone()]
        test_acc, train_loss = [], []
        trusted_log: list[torch.Tensor] = []
        thresholds_log: list[torch.Tensor] = []
        label_log: list[tuple[int, torch.Tensor]] = [(0, loop.labels.clone())]

        def loss_pass(back: int) -> tuple[torch.Tensor, torch.Tensor]:
            """The trust loop's :data:`~tad_plugin.trust_loop.LossPass` over the group's snapshots."""
            with self._eval_precision():
                return per_sample_predictions(cfg, snapshots[-1 - back], images, loop.labels,
                                              self._preprocess_for(images), buf.eval_batch_size, self._eval_forward)

        dual = self.dual_loop
        loss_pass = clock.timed("loss pass", loss_pass)
        features = None if dual is None else clock.timed("features", lambda: dual.features)
        anchors = None if dual is None else clock.timed("anchors", lambda lp: dual.anchors(lp, snapshots))
        # the trust loop's phase only where TAD runs one: without TAD its calls do nothing worth a row
        trust_phase = (lambda: clock.time("trust loop")) if self.tad is not None else contextlib.nullcontext
        with trust_phase():
            loop.before_epoch(0, loss_pass, features, anchors)
        for epoch in range(t_total):
            loop.check_nonempty(epoch)
            if self.tad is not None:
                trusted_log.append(loop.trusted.clone())
                thresholds_log.append(loop.thresholds)
            with clock.time("train"):
                params, momentum_buf, loss = self._train_epoch(params, momentum_buf, images, loop, gen, dsa, epoch)
                snapshots.append(params.detach().clone())
            with clock.time("test"):
                acc = self._test(params, test_images, test_labels)
            train_loss.append(loss)
            test_acc.append(acc)
            # one sync per epoch: catch divergence early, with the expert named
            finite = torch.isfinite(loss)
            if not bool(finite.all()):
                bad = experts[int((~finite).nonzero()[0])]
                raise ExpertError(f"expert {bad} diverged in epoch {epoch} (NaN/inf training loss); lower "
                                  f"buffer.lr (now {buf.lr}) or check the data")
            bar.set_postfix(test_acc=f"{float(acc.mean()):.3f}", refresh=False)
            bar.update(e)
            if epoch + 1 == t_total:
                break
            if epoch + 1 == pause_before:
                yield
            with trust_phase():
                done = loop.before_epoch(epoch + 1, loss_pass, features, anchors)
            relabelled = done.recalibrated
            if self.on_epoch is not None:
                update = self.on_epoch(EpochState(epoch, list(experts), params, loop.labels, loop.trusted,
                                                  done.losses, done.splits, k, snapshots, done.predictions))
                if update is not None:
                    loop.update(update.labels, update.trusted, epoch=epoch + 1)
                    relabelled = relabelled or update.labels is not None
            if relabelled:
                label_log.append((epoch + 1, loop.labels.clone()))

        traj = torch.stack(snapshots, dim=1).cpu()  # [E, T+1, P]
        acc_all = torch.stack(test_acc, dim=1).float().cpu()
        loss_all = torch.stack(train_loss, dim=1).float().cpu()
        label_epochs = torch.tensor([ep for ep, _ in label_log], dtype=torch.int64)
        label_rows = torch.stack([lab for _, lab in label_log], dim=1).cpu()  # [E, U, N]
        if self.tad is not None:
            trusted_all = torch.stack(trusted_log, dim=1).cpu()
            thr_all = torch.stack(thresholds_log, dim=1).float().cpu()
        records = []
        for j, idx in enumerate(experts):
            rows, epochs_j = _dedupe_labels(label_rows[j], label_epochs)
            records.append(ExpertRecord(
                index=idx, params=traj[j].contiguous(), test_acc=acc_all[j], train_loss=loss_all[j],
                trusted=trusted_all[j] if self.tad is not None else None,
                thresholds=thr_all[j] if self.tad is not None else None,
                label_epochs=epochs_j, labels=rows, seed=seeds[j]))
        return records

    # ------------------------------------------------------------------ the hot loop
    def _epoch_order(self, trusted: torch.Tensor, labels: torch.Tensor,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per-expert random order of trusted indices as a fixed-size [E, S*B] tensor, the number of
        steps each expert takes [E], and S (one host read per epoch). With ``tad.balance_classes`` the
        indices are drawn with replacement, each trusted sample with a chance inversely proportional to the
        trusted count of its label in ``labels`` [E, N] (as many draws as the expert has trusted samples)."""
        e, n = trusted.shape
        b = self.buffer.batch_size
        counts = trusted.sum(1)  # [E]
        steps_e = (counts + b - 1) // b
        s = int(steps_e.max())  # the one sync of the epoch's set-up
        if self.tad is not None and self.tad.balance_classes:
            weight = class_balanced_weights(trusted, labels, self.net.num_classes)
            # an expert without trusted samples takes no step, but multinomial needs a positive row
            weight = torch.where((counts == 0).unsqueeze(1), torch.ones_like(weight), weight)
            return torch.multinomial(weight, max(s * b, 1), replacement=True, generator=gen)[:, :s * b], steps_e, s
        keys = torch.rand(e, n, generator=gen, device=self.device)
        keys = keys.masked_fill(~trusted, 2.0)  # untrusted last
        order = keys.argsort(dim=1)
        pos = torch.arange(s * b, device=self.device)
        idx = order.gather(1, pos.unsqueeze(0) % counts.clamp_min(1).unsqueeze(1))
        return idx, steps_e, s

    def _train_epoch(self, params: torch.Tensor, mom: torch.Tensor | GSAM | None, images: torch.Tensor,
                     loop: TrustLoop, gen: torch.Generator, dsa: DSA | None,
                     epoch: int) -> tuple[torch.Tensor, torch.Tensor | GSAM | None, torch.Tensor]:
        """Epoch ``epoch`` on ``loop``'s trusted spaces and labels with its criterion; ``mom`` is SGD's momentum
        buffer [E, P] (or None), or the :class:`GSAM` optimiser that owns ``params`` (updated in place)."""
        cfg, buf = self.net, self.buffer
        e, b, k = params.shape[0], buf.batch_size, cfg.num_classes
        labels = loop.labels
        idx, steps_e, s = self._epoch_order(loop.trusted, labels, gen)
        all_done = bool(self.tad is None)  # every expert takes every step: skip the masking
        loss_sum = torch.zeros(e, device=self.device)
        criterion = loop.criterion(epoch)
        for step in range(s):
            batch = idx[:, step * b:(step + 1) * b]  # [E, B]
            x = self._model_input(images, batch.reshape(-1))
            if dsa is not None:
                x = dsa(x, groups=e)
            y = labels.gather(1, batch)
            active = None if all_done else (step < steps_e)

            def loss_of(p: torch.Tensor, x: torch.Tensor = x, y: torch.Tensor = y) -> tuple[torch.Tensor, torch.Tensor]:
                with torch.autocast(self.device.type, torch.bfloat16, enabled=self._amp):
                    out = self._forward(cfg, p, x.view(e, b, *x.shape[1:]), channels_last=buf.channels_last)
                out = out.float()
                return criterion(out.reshape(e * b, k), y.reshape(-1), out.reshape(e * b, k)) * e, out

            if isinstance(mom, GSAM):
                logits = _gsam_step(mom, loss_of, active)
            else:
                params = params.detach().requires_grad_(True)
                loss, logits = loss_of(params)
                (grad,) = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    params, mom = self._sgd(params.detach(), grad, mom, active)
            with torch.no_grad():
                per_expert = F.cross_entropy(logits.detach().reshape(e * b, k).float(), y.reshape(-1),
                                             reduction="none").view(e, b).mean(1)
                loss_sum += per_expert if active is None else per_expert * active
        return params, mom, loss_sum / steps_e.clamp_min(1)

    def _sgd(self, params: torch.Tensor, grad: torch.Tensor, mom: torch.Tensor | None,
             active: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """torch.optim.SGD's update (dampening 0, no Nesterov) on the flat [E, P] parameters."""
        buf = self.buffer
        if buf.weight_decay:
            grad = grad.add(params, alpha=buf.weight_decay)
        if mom is not None:
            new_mom = mom.mul(buf.momentum).add_(grad)
            mom = new_mom if active is None else torch.where(active[:, None], new_mom, mom)
            grad = new_mom
        step = grad.mul(buf.lr)
        if active is not None:
            step = step * active[:, None]
        return params - step, mom

    def _test(self, params: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Test accuracy [E] of each expert, in the training forward's precision and layout."""
        with self._eval_precision():
            _, correct = per_sample_losses(self.net, params, images, labels, self._preprocess_for(images),
                                           self.buffer.eval_batch_size, self._eval_forward)
        return correct.float().mean(1)


def _gsam_step(opt: GSAM, loss_of: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
               active: torch.Tensor | None) -> torch.Tensor:
    """One GSAM step of the E experts in ``opt``'s single [E, P] parameter; returns the logits of the
    first (unperturbed) evaluation. Experts with ``active`` False keep their parameters and momentum."""
    (p,) = opt.param_groups[0]["params"]
    first: list[torch.Tensor] = []

    def closure() -> torch.Tensor:  # evaluated twice: at w and at the perturbed w + e
        opt.zero_grad()
        loss, logits = loss_of(p)
        loss.backward()
        if not first:
            first.append(logits.detach())
        return loss

    keep = None
    if active is not None:
        mom = opt.base_optimizer.state.get(p, {}).get("momentum_buffer")
        keep = (p.detach().clone(), None if mom is None else mom.clone())
    opt.step(closure)
    if keep is not None:
        assert active is not None  # keep is taken only for active
        rows = active[:, None]
        with torch.no_grad():
            p.copy_(torch.where(rows, p, keep[0]))
            mom = opt.base_optimizer.state.get(p, {}).get("momentum_buffer")
            if mom is not None and keep[1] is not None:
                mom.copy_(torch.where(rows, mom, keep[1]))
    return first[0]


def _dedupe_labels(rows: torch.Tensor, epochs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop label rows equal to the previous one (a recalibration that changed nothing)."""
    keep = [0] + [u for u in range(1, rows.shape[0]) if not torch.equal(rows[u], rows[u - 1])]
    return rows[keep].contiguous(), epochs[keep].contiguous()


def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a uint8 tensor [N, C, H, W] (pixels 0..255), got {got}; load data "
                        f"with tad_plugin.data.load_dataset")
