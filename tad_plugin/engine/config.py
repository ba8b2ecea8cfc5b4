"""Run configurations: typed dataclasses, YAML loading, and merging of command-line overrides.

A run config is a :class:`RunConfig` made of sections (``data``, ``model``, ``buffer``, ``tad``,
``distill``, ``eval``) plus a few top-level fields. Precedence, lowest first: the dataclass defaults
(or an adapter's defaults), a YAML file, then ``key.sub=value`` overrides from the command line.
Unknown keys and values of the wrong type are errors that name the key and the allowed ones.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..checks import is_integer
from ..errors import TADError
from ..trust_loop import Schedule, recalibration_meets_division
from .student_grad import COMPILE_MODES, INNER_GRADS, is_recompute_choice

__all__ = ["ConfigError", "DataConfig", "ModelConfig", "BufferConfig", "TADConfig", "DistillConfig",
           "EvalConfig", "RunConfig", "load_yaml", "merge", "from_dict", "to_dict", "parse_override",
           "apply_overrides", "build_config"]


#: The distillers with an adapter (``tad_plugin.adapters.<name>``).


class ConfigError(TADError, ValueError):
    """A configuration key or value is invalid; the message names it and says what is allowed."""


@dataclass
class DataConfig:
    """Where the training data come from and how its labels are corrupted.

    ``noise`` None means the labels are used as loaded; ``cifar_n`` (a CIFAR-N ``.pt`` file) takes
    precedence over synthetic noise and uses the label column ``label_set``.
    """

    dataset: str = "digits"
    root: str | None = None
    download: bool = False
    noise: str | None = None
    noise_rate: float = 0.0
    noise_seed: int = 0
    cifar_n: str | None = None
    label_set: str = "worse_label"
    zca: bool = False

    def validate(self) -> None:
        kinds = (None, "symmetric", "asymmetric-cifar10", "asymmetric-cifar100")
        if self.noise not in kinds:
            raise ConfigError(f"data.noise must be one of {kinds}, got {self.noise!r}")
        if not 0.0 <= self.noise_rate < 1.0:
            raise ConfigError(f"data.noise_rate must lie in [0, 1), got {self.noise_rate}")
        if self.noise_seed < 0:
            raise ConfigError(f"data.noise_seed must be >= 0 (NumPy's generator takes no negative seed), got "
                              f"{self.noise_seed}")
        if self.noise is not None and self.cifar_n is not None:
            raise ConfigError("give either data.noise (synthetic) or data.cifar_n (real noise), not both")
        if self.noise is None and self.noise_rate > 0:
            raise ConfigError(f"data.noise_rate {self.noise_rate} without data.noise flips no label; give the kind "
                              f"too (--noise symmetric, asymmetric-cifar10 or asymmetric-cifar100)")
        if self.noise is not None and self.noise_rate == 0:
            raise ConfigError(f"data.noise {self.noise} at data.noise_rate 0 flips no label; give --noise-rate, or "
                              "drop --noise to use the labels as loaded")


@dataclass
class ModelConfig:
    """The ConvNet: ``depth`` x [conv(width) -> instance norm -> ReLU -> avgpool] -> linear.
    ``depth`` None = upstream's choice for the image size (3 up to 32 px, 4 for 64 px)."""

    width: int = 128
    depth: int | None = None

    def validate(self) -> None:
        _positive(self, "model", "width")
        if self.depth is not None and self.depth < 1:
            raise ConfigError(f"model.depth must be >= 1 or null, got {self.depth}")


@dataclass
class BufferConfig:
    """Expert training (MTT's buffer.py defaults: SGD lr 0.01, no momentum/wd, batch 256, 50 epochs).

    ``experts_per_group``: experts trained together in one batched pass (speed and memory; the experts of a
    group share random streams, so another grouping gives equivalent experts, not identical ones).
    ``compile``: ``torch.compile`` the network's forward. ``channels_last``: NHWC convolutions. ``amp``: bf16
    autocast of the training forward on CUDA (off = fp32/TF32); the test pass and
    TAD's per-sample loss pass run in the same precision and layout.
    ``optimizer``: ``"sgd"`` (MTT, ATT) or ``"gsam"`` (FTD, DATM: :class:`~tad_plugin.engine.gsam.GSAM`
    around SGD with ``lr``/``momentum``/``weight_decay``, adaptive, constant radius ``rho``, gradient
    decomposition weight ``alpha``; two forward/backward passes per step, so ``expert_loss`` runs twice).
    ``rho`` and ``alpha`` are read only with ``optimizer: gsam`` (upstream scripts: 0.01 and 0.3).
    ``cache_inputs``: preprocess (normalise or ZCA-whiten) the training and test images once per buffer
    stage and keep the float32 model inputs on the device (4 bytes per value: 0.74 GB for CIFAR-10's
    60,000 images, 5.4 GB for Tiny ImageNet's 110,000), instead of preprocessing every minibatch from the
    uint8 images (with ZCA a 3072 x 3072 matrix product per batch, in every training step, loss pass and
    test pass). Same values up to float rounding; off = uint8 resident only.
    ``eval_batch_size``: images per pass without augmentation (TAD's per-sample losses before each division,
    the test pass), for all the group's experts at once, so the memory of those passes grows with it times
    ``experts_per_group``; no effect on the results (lower it when the GPU runs out of memory).
    """

    num_experts: int = 100
    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    experts_per_group: int = 10
    eval_batch_size: int = 2048
    compile: bool = False
    channels_last: bool = False
    amp: bool = False
    optimizer: str = "sgd"
    rho: float = 0.01
    alpha: float = 0.3
    cache_inputs: bool = True

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "gsam"):
            raise ConfigError(f"buffer.optimizer must be 'sgd' or 'gsam', got {self.optimizer!r}")
        if self.rho < 0 or self.alpha < 0:
            raise ConfigError(f"buffer.rho and buffer.alpha must be >= 0, got {self.rho}, {self.alpha}")
        _positive(self, "buffer", "num_experts", "epochs", "lr", "batch_size", "experts_per_group",
                  "eval_batch_size")
        if not 0.0 <= self.momentum < 1.0 or self.weight_decay < 0:
            raise ConfigError("buffer.momentum must lie in [0, 1) and buffer.weight_decay be >= 0")


#: the trust loop's schedule defaults: TADConfig's fields of the same names take them (one source)
_SCHEDULE: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Schedule)}


@dataclass
class TADConfig:
    """Trust-Aware Diversion settings (the ``tad`` section). ``None`` values use the plugin's documented defaults.

    ``reg_weight``, ``log_zero``, ``top_k``, ``num_neighbors``, ``vote_threshold`` (``"calibrated"`` or
    ``"fixed"``), ``calibration_quantile``, ``recall_confidence``, ``sieve_confidence``, ``sieve``,
    ``search_backend``, ``gmm_random_state``, ``gmm_max_iter``, ``gmm_tol`` and ``gmm_reg_covar``: every knob of
    :class:`~tad_plugin.tad.TrustAwareDiversion`, passed to it (documented there); None = its default.
    ``anchor_epoch``, ``recalibrate_every``, ``recall_once`` (also under ``tad wrap``) and the schedule fields
    below: the trust loop's :class:`~tad_plugin.trust_loop.Schedule`; ``anchor_ipc``, ``anchor_iterations``: the
    anchors (:class:`~tad_plugin.engine.dual_loop.DualLoopConfig`).

    Attributes:
        enabled: TAD on; off = the method on the noisy labels (the noisy arm).
        warmup_epochs: epochs trained on the whole training set before the first division; the division for
            epoch ``warmup_epochs`` uses the losses after them (0 = divide on the initialisation's losses).
            Default 2: the experts fit the clean majority before they memorise the noise.
        recompute_every: epochs between divisions after the warm-up (1 = before every epoch, the paper).
        split: ``"per-expert"`` (each expert divides by its own per-sample losses; the paper, the default) or
            ``"shared"`` (one division from the losses averaged over a group's experts: fewer mixture fits).
            Engine only.
        outer_loop: the paper's OL: divide into trusted and untrusted samples from ``warmup_epochs`` on and
            train each expert on its trusted space; off = every sample trains every epoch (the experts still
            use ``expert_loss``). With ``reg_weight`` (Reg) and ``inner_loop`` (IL) it switches the parts of
            the paper's Table 3.
        inner_loop: the inner loop (anchors + ``recalibrate``); needs ``outer_loop``, whose untrusted samples
            it recalls.
        features: what embeds samples and anchors for the inner loop: None = the extractor ``tad features
            train`` wrote for this dataset, a path to such a file, or ``"pixels"`` (raw pixels; adequate for
            tiny grey images such as digits, not for CIFAR). ``tad wrap`` also takes ``"expert"`` or a float
            [N, D] tensor file (see :mod:`tad_plugin.upstream.epoch`).
        features_wait_s: seconds the inner loop waits for the extractor file when it first needs it (after
            ``anchor_epoch`` epochs), for an extractor a concurrent ``tad features train`` is still training.
            Meanwhile every expert group trains up to its first recalibration before any group goes on, so the
            extractor trains beside all of their early epochs (the experts are the same as group by group).
            Default 0: the file must exist when the buffer stage starts, so a missing one is reported at once.
        balance_classes: draw each expert's epoch from its trusted space class-balanced (a sample's chance
            inversely proportional to the trusted count of its label, with replacement, as many draws as
            trusted samples) instead of once each in random order. For systematic (asymmetric) noise, where
            the class-mean threshold leaves the flipped-from classes small. Default False: the paper's
            sampling. Also under ``tad wrap``.
        warmup_confidence_penalty: weight ``w`` of a confidence penalty (``w * mean sum_k p_k log p_k``,
            :func:`tad_plugin.losses.confidence_penalty`) added to the experts' loss in the warm-up epochs only,
            so that systematic flips are not memorised before the first division (DivideMix's remedy for
            asymmetric noise). Default 0 (off): the paper's loss.
        loss_average: the number K of most recent parameter snapshots whose per-sample losses are averaged for a
            division (fewer early on: all there are); costs K - 1 extra passes per division. Default 1: the
            last epoch's losses, the paper's division. Engine only.

    Which of these to change for which noise, with the runs that measured them: the guide's "Choosing TAD's
    settings per noise type".
    """

    enabled: bool = True
    reg_weight: float | None = None
    log_zero: float | None = None
    top_k: int | None = None
    num_neighbors: int | None = None
    vote_threshold: str | None = None
    calibration_quantile: float | None = None
    recall_confidence: float | None = None
    sieve_confidence: float | None = None
    sieve: bool | None = None
    search_backend: str | None = None
    gmm_random_state: int | None = None
    gmm_max_iter: int | None = None
    gmm_tol: float | None = None
    gmm_reg_covar: float | None = None
    warmup_epochs: int = _SCHEDULE["warmup_epochs"]
    recompute_every: int = _SCHEDULE["recompute_every"]
    split: str = _SCHEDULE["split"]
    outer_loop: bool = _SCHEDULE["outer_loop"]
    inner_loop: bool = _SCHEDULE["inner_loop"]
    features: str | None = None
    features_wait_s: float = 0.0
    anchor_epoch: int = _SCHEDULE["anchor_epoch"]
    anchor_ipc: int = 10
    anchor_iterations: int = 200
    recalibrate_every: int = _SCHEDULE["recalibrate_every"]
    recall_once: bool = _SCHEDULE["recall_once"]
    balance_classes: bool = False
    warmup_confidence_penalty: float = _SCHEDULE["warmup_confidence_penalty"]
    loss_average: int = _SCHEDULE["loss_average"]

    def validate(self) -> None:
        if self.split not in ("per-expert", "shared"):
            raise ConfigError(f"tad.split must be 'per-expert' or 'shared', got {self.split!r}")
        if self.inner_loop and not self.outer_loop:
            raise ConfigError("tad.inner_loop needs tad.outer_loop: the inner loop recalibrates the samples the "
                              "outer loop's division leaves out, and without it no division is made; set "
                              "tad.inner_loop=false too (or tad.outer_loop=true)")
        if self.warmup_epochs < 0 or self.recompute_every < 1:
            raise ConfigError("tad.warmup_epochs must be >= 0 and tad.recompute_every >= 1")
        if not self.features_wait_s >= 0:
            raise ConfigError(f"tad.features_wait_s must be >= 0 seconds (0 = the extractor must exist at the "
                              f"start), got {self.features_wait_s}")
        if not self.warmup_confidence_penalty >= 0:
            raise ConfigError(f"tad.warmup_confidence_penalty must be >= 0 (0 = off), got "
                              f"{self.warmup_confidence_penalty}")
        if not is_integer(self.loss_average) or self.loss_average < 1:
            raise ConfigError(f"tad.loss_average must be an integer >= 1 (1 = the last epoch's losses), got "
                              f"{self.loss_average!r}")
        if self.anchor_ipc < 2 or self.anchor_epoch < 3 or self.anchor_iterations < 1 or self.recalibrate_every < 1:
            raise ConfigError("tad.anchor_ipc must be >= 2, tad.anchor_epoch >= 3 (anchors match epochs 0-3), "
                              "tad.anchor_iterations and tad.recalibrate_every >= 1")
        if self.enabled and self.inner_loop and not recalibration_meets_division(
                self.warmup_epochs, self.recompute_every, self.anchor_epoch, self.recalibrate_every):
            raise ConfigError(f"TAD never recalibrates: divisions come before epochs tad.warmup_epochs + k * "
                              f"tad.recompute_every ({self.warmup_epochs} + k * {self.recompute_every}), "
                              f"recalibrations before tad.anchor_epoch + k * tad.recalibrate_every "
                              f"({self.anchor_epoch} + k * {self.recalibrate_every}), and the two never meet; change "
                              f"tad.anchor_epoch or tad.recalibrate_every (or set tad.inner_loop=false)")
        self.check_plugin_kwargs()

    def plugin_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``TrustAwareDiversion``: its knobs (its fields, by name) that are set."""
        from ..tad import TrustAwareDiversion

        names = [f.name for f in dataclasses.fields(TrustAwareDiversion)]
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def check_plugin_kwargs(self) -> None:
        """Raise :class:`ConfigError` naming the ``tad.`` key whose value ``TrustAwareDiversion`` refuses."""
        from ..tad import TrustAwareDiversion

        kwargs = self.plugin_kwargs()
        for key, value in kwargs.items():
            try:
                TrustAwareDiversion(**{key: value})
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"tad.{key} = {value!r}: {exc}") from exc
        try:
            TrustAwareDiversion(**kwargs)
        except (TypeError, ValueError) as exc:  # values fine alone, not together (e.g. top_k < num_neighbors)
            keys = ", ".join(f"tad.{k}" for k in kwargs if k in str(exc)) or ", ".join(f"tad.{k}" for k in kwargs)
            raise ConfigError(f"{keys}: {exc}") from exc


@dataclass
class DistillConfig:
    """Trajectory-matching distillation (MTT names; see the adapter for the per-dataset table).

    ``num_experts`` None = every expert of the buffer. ``eval_every`` 0 = evaluate only at the end
    (upstream: every 100 iterations, reporting the best evaluation). ``checkpoint_every`` 0 = no
    intermediate checkpoints by count; ``checkpoint_seconds`` checkpoints by time as well (default 60: a
    killed run loses at most about a minute of distillation; 0 = by count only).

    Fields of the other methods (off by default; the adapters' defaults switch them on):

    * FTD / ATT: ``ema_decay`` keeps an EMA of the images, evaluated from fresh networks;
      ``ema_eval_reuses_raw_net`` reproduces upstream's evaluation instead (see
      :attr:`tad_plugin.engine.matching.MatchingConfig.ema_eval_reuses_raw_net`).
    * ATT: ``adaptive_length`` matches the inner step closest to the target, the distance being
      ``adaptive_distance``: ``"l1"`` (upstream's code) or ``"squared_l2"`` (the paper's text).
    * DATM: start epochs from ``[min_start_epoch, hi)`` (``min_start_epoch`` applies to every method;
      default 0: every method's own start); with ``window_start`` set (T', sequential
      generation) ``hi`` grows from ``window_start`` to ``max_start_epoch`` over
      ``window_growth_iterations`` iterations (None = ``hi = max_start_epoch`` throughout);
      ``lr_labels`` learns soft labels (logits; SGD with ``label_momentum``; None = hard labels);
      ``label_temperature``: the initial soft labels are the experts' logits divided by it (1 = upstream; > 1
      softens them, for experts trained on a trusted space, whose logits are nearly one-hot);
      ``loss_gate``: skip the update of an iteration whose matching loss exceeds it (None = never);
      ``pix_init = "samples_predicted_correctly"``: real images the experts classify correctly.

    TAD runs: ``init_consensus`` is the share of the experts that must have trusted a sample at their last
    epoch for it to be drawn as a real initial image (0.5 = the majority, the default; 1 = every expert:
    fewer, cleaner candidates; a run record's ``stages.buffer.by_vote`` gives the size and precision of the
    space at 0.5, 0.75 and 1). Ignored without TAD.

    Speed and memory: ``inner_grad`` = ``"autograd"`` (upstream's double backward), ``"explicit"`` or
    ``"compiled"`` (the student's backward written out, optionally under torch.compile; same values);
    ``recompute_steps`` recomputes each unrolled step in the final backward (true: all of it, one step's
    graph kept at a time; elementwise: all but its convolutions and matrix products; explicit/compiled
    only); ``compile_mode`` is torch.compile's mode for ``inner_grad: compiled`` (``reduce-overhead``: CUDA graphs);
    ``cudnn_benchmark`` turns cuDNN's algorithm search on while distilling (false: the process's setting, off by
    default, so the same kernels every run): see :class:`tad_plugin.engine.matching.MatchingConfig`.
    """

    ipc: int = 10
    iterations: int = 5000
    syn_steps: int = 30
    expert_epochs: int = 2
    max_start_epoch: int = 20
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_teacher: float = 0.01
    batch_syn: int | None = None
    pix_init: str = "real"
    init_consensus: float = 0.5
    num_experts: int | None = None
    eval_every: int = 0
    checkpoint_every: int = 100
    checkpoint_seconds: float = 60.0
    dsa: bool = True
    ema_decay: float | None = None
    ema_eval_reuses_raw_net: bool = False
    adaptive_length: bool = False
    adaptive_distance: str = "l1"
    min_start_epoch: int = 0
    window_start: int | None = None
    window_growth_iterations: int = 1000
    lr_labels: float | None = None
    label_momentum: float = 0.9
    label_temperature: float = 1.0
    loss_gate: float | None = None
    inner_grad: str = "autograd"
    recompute_steps: bool | str = False
    compile_mode: str = "default"
    cudnn_benchmark: bool = False

    def validate(self) -> None:
        _positive(self, "distill", "ipc", "iterations", "syn_steps", "expert_epochs", "max_start_epoch",
                  "lr_img", "lr_teacher", "window_growth_iterations")
        if self.pix_init not in ("real", "noise", "samples_predicted_correctly"):
            raise ConfigError(f"distill.pix_init must be 'real', 'noise' or 'samples_predicted_correctly', got "
                              f"{self.pix_init!r}")
        if self.eval_every < 0 or self.checkpoint_every < 0 or not self.checkpoint_seconds >= 0:
            raise ConfigError(f"distill.eval_every, checkpoint_every and checkpoint_seconds must be >= 0 (0 = off), "
                              f"got {self.eval_every}, {self.checkpoint_every}, {self.checkpoint_seconds}")
        if not 0 < self.init_consensus <= 1:
            raise ConfigError(f"distill.init_consensus must lie in (0, 1] (the share of experts that trusted a "
                              f"sample), got {self.init_consensus}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"distill.ema_decay must lie in (0, 1) or be null, got {self.ema_decay}")
        if self.adaptive_distance not in ("l1", "squared_l2"):
            raise ConfigError(f"distill.adaptive_distance must be 'l1' or 'squared_l2', got "
                              f"{self.adaptive_distance!r}")
        if self.inner_grad not in INNER_GRADS:
            raise ConfigError(f"distill.inner_grad must be one of {', '.join(INNER_GRADS)}, got {self.inner_grad!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"distill.compile_mode must be one of {', '.join(COMPILE_MODES)}, got "
                              f"{self.compile_mode!r}")
        if self.loss_gate is not None and not self.loss_gate > 0:  # NaN and inf are refused for every float key
            raise ConfigError(f"distill.loss_gate must be > 0 or null (always update), got {self.loss_gate}: at or "
                              f"below 0 every iteration is gated and the images never change")
        if not is_recompute_choice(self.recompute_steps):
            raise ConfigError(f"distill.recompute_steps must be false, true or elementwise, got "
                              f"{self.recompute_steps!r}")
        if self.recompute_steps and self.inner_grad == "autograd":
            raise ConfigError("distill.recompute_steps needs distill.inner_grad explicit or compiled (the double "
                              "backward of inner_grad=autograd cannot recompute its steps)")
        if not 0 <= self.min_start_epoch < self.max_start_epoch:
            raise ConfigError(f"need 0 <= distill.min_start_epoch < distill.max_start_epoch, got "
                              f"{self.min_start_epoch}, {self.max_start_epoch}")
        if self.window_start is not None and not self.min_start_epoch < self.window_start <= self.max_start_epoch:
            raise ConfigError(f"distill.window_start must lie in (min_start_epoch, max_start_epoch] = "
                              f"({self.min_start_epoch}, {self.max_start_epoch}], got {self.window_start}")
        if self.lr_labels is not None and not self.lr_labels > 0:
            raise ConfigError(f"distill.lr_labels must be > 0 or null (hard labels), got {self.lr_labels}")
        if not self.label_temperature > 0:
            raise ConfigError(f"distill.label_temperature must be > 0 (1 = the experts' logits as they are), got "
                              f"{self.label_temperature}")
        if self.label_temperature != 1.0 and self.lr_labels is None:
            raise ConfigError("distill.label_temperature only applies to learned soft labels: set distill.lr_labels "
                              "(DATM) or leave the temperature at 1")
        if not 0 <= self.label_momentum < 1:
            raise ConfigError(f"distill.label_momentum must lie in [0, 1), got {self.label_momentum}")


@dataclass
class EvalConfig:
    """Evaluation of a distilled set: ``num_eval`` fresh nets trained together (MTT: 5 x 1000 epochs).

    ``compile``: the nets' forward + loss through ``torch.compile`` (faster on a GPU; the first evaluation
    compiles).
    """

    num_eval: int = 5
    epochs: int = 1000
    batch_size: int = 256
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dsa: bool = True
    compile: bool = False

    def validate(self) -> None:
        _positive(self, "eval", "num_eval", "epochs", "batch_size")


@dataclass
class RunConfig:
    """A whole run. ``device`` None = CUDA if available, else CPU; ``out`` is the run directory;
    ``method`` the distiller (its adapter's defaults lie under the config)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    tad: TADConfig = field(default_factory=TADConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str | None = None
    out: str = "runs/tad"
    method: str = "mtt"

    def validate(self) -> RunConfig:
        """Check every section; returns self. Raises :class:`ConfigError`."""
        for section in (self.data, self.model, self.buffer, self.tad, self.distill, self.eval):
            section.validate()
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0 (NumPy's generators take no negative seed), got {self.seed}")
        if self.distill.max_start_epoch + self.distill.expert_epochs > self.buffer.epochs:
            raise ConfigError(
                f"distill.max_start_epoch + distill.expert_epochs = "
                f"{self.distill.max_start_epoch + self.distill.expert_epochs} exceeds buffer.epochs = "
                f"{self.buffer.epochs}: lower max_start_epoch or train longer experts")
        if self.tad.enabled and self.tad.inner_loop and self.tad.anchor_epoch >= self.buffer.epochs:
            raise ConfigError(f"tad.anchor_epoch = {self.tad.anchor_epoch} leaves no epoch for the inner loop "
                              f"(buffer.epochs = {self.buffer.epochs}); lower it or set tad.inner_loop=false")
        return self


def _positive(obj: Any, section: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{section}.{name} must be > 0, got {getattr(obj, name)}")


T = TypeVar("T")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of its fields ({key}.<field>: value), got {value!r} "
                              f"({type(value).__name__}); in YAML, indent the fields under `{key}:`")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # NaN passes every `<` check: refused here, for every float setting
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{key} must be {tp.__name__}, got {value!r} ({type(value).__name__})")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping; missing keys keep their defaults.

    Raises:
        ConfigError: an unknown key (the message lists the known ones) or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key {prefix + str(key)!r}; known keys: "
                              f"{', '.join(prefix + n for n in names)}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a plain nested dict (JSON/YAML-serialisable)."""
    return dataclasses.asdict(cfg)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: values of ``override`` win; nested mappings are merged key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file as a mapping. Raises :class:`ConfigError` if unreadable or not a mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(exc)}; fix that line") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line error as one clause: what is wrong and where (line and column, 1-based)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def parse_override(text: str) -> dict[str, Any]:
    """``"buffer.epochs=5"`` -> ``{"buffer": {"epochs": 5}}``; the value is parsed as YAML (``null``,
    numbers, booleans, strings)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. buffer.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse the value: {_yaml_problem(exc)}; quote it or fix "
                          f"it") from exc
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge every ``key=value`` override into ``data`` (later ones win)."""
    for text in overrides:
        data = merge(data, parse_override(text))
    return data


def build_config(defaults: dict[str, Any] | None = None, yaml_path: str | os.PathLike[str] | None = None,
                 overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> RunConfig:
    """defaults < YAML file < ``overrides`` (a nested dict, e.g. from CLI flags) < ``sets``
    (``key=value`` strings); validated."""
    data: dict[str, Any] = dict(defaults or {})
    if yaml_path is not None:
        data = merge(data, load_yaml(yaml_path))
    data = merge(data, overrides or {})
    data = apply_overrides(data, sets or [])
    return from_dict(RunConfig, data).validate()
