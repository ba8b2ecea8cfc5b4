"""DATM (Guo et al., ICLR 2024, "Towards Lossless Dataset Distillation via Difficulty-Aligned
Trajectory Matching") with TAD on and off.

What DATM adds to MTT, and where it lives:

* ``buffer``: FTD's GSAM experts (rho 0.01, alpha 0.3) over 100 epochs -- engine settings
  (:func:`datm_defaults`).
* **Difficulty-aligned start window** (:class:`DATMMatcher`): the start epoch is drawn from
  ``[min_start_epoch, hi)``; with sequential generation (``distill.window_start`` = T' set) ``hi``
  grows linearly from T' to ``max_start_epoch`` = T+ over ``window_growth_iterations`` iterations
  (:func:`window_upper_bound`), else ``hi = max_start_epoch``.
* **Learned soft labels**: the labels are logits learned with their own SGD (``distill.lr_labels``,
  ``label_momentum``); the student and the evaluation nets train with the soft cross-entropy
  ``mean_i sum_k -log_softmax(z_i)_k softmax(y_i)_k`` (engine). The loss gate (``distill.loss_gate``)
  skips the update of iterations whose matching loss exceeds it (engine).
* **Initialisation from the experts** (:meth:`DATM.initial_images`, :meth:`DATM.initial_labels`):
  images are real samples that the experts (at their last epoch) classify as their class, taken from
  the first expert, then the next ones while a class is short (:func:`predicted_correctly_indices`);
  soft labels are the experts' logits averaged over the experts that classify the image correctly
  (:func:`soft_label_init`). With TAD both are drawn from the TRUSTED space with the experts'
  recalibrated labels (:meth:`~tad_plugin.engine.pipeline.Pipeline.init_pool`): upstream draws from
  the noisy classes, and its last-epoch experts have memorised the noisy labels, so mislabelled images
  would pass the "predicted correctly" test.

Differences from upstream, on purpose: an image that no expert classifies correctly gets the mean
logits of all experts (upstream divides by a zero count: NaN labels); if the experts classify fewer
than ``ipc`` candidates of a class correctly, the class is completed with random candidates (and a
warning) where upstream loops on; soft labels of a ``pix_init = "real"`` set follow the same rule
(upstream takes the logits of one expert).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from tad_plugin.data import ImageDataset
from tad_plugin.engine.convnet import ConvNetConfig, forward
from tad_plugin.engine.experts import per_sample_losses
from tad_plugin.engine.matching import TrajectoryMatcher, real_init_indices
from tad_plugin.engine.pipeline import Pipeline, method_defaults, table_row
from tad_plugin.engine.preprocess import Preprocessor
from tad_plugin.engine.trajectories import TrajectoryStore

__all__ = ["DATM", "DATM_TABLE", "datm_defaults", "DATMMatcher", "window_upper_bound",
           "predicted_correctly_indices", "soft_label_init", "expert_logits"]

log = logging.getLogger(__name__)

#: DATM's per-setting hyper-parameters (``configs/<dataset>/ConvIN/IPC*.yaml``; upstream.md 4.3).
#: ``window_start`` = ``current_max_start_epoch`` (None: sequential generation off),
#: ``window_growth_iterations`` = ``expansion_end_epoch``, ``lr_labels``/``label_momentum`` =
#: ``lr_y``/``Momentum_y``, ``loss_gate`` = ``threshold``; ``batch_syn`` None = all images.
DATM_TABLE: dict[tuple[str, int], dict[str, Any]] = {
    ("cifar10", 1): dict(syn_steps=80, expert_epochs=2, min_start_epoch=0, window_start=None,
                         max_start_epoch=4, window_growth_iterations=1000, batch_syn=None, lr_img=100.0,
                         lr_lr=1e-7, lr_teacher=0.01, lr_labels=5.0, label_momentum=0.9, loss_gate=1.1,
                         pix_init="samples_predicted_correctly", zca=True),
    ("cifar10", 10): dict(syn_steps=80, expert_epochs=2, min_start_epoch=0, window_start=10,
                          max_start_epoch=20, window_growth_iterations=1000, batch_syn=None, lr_img=100.0,
                          lr_lr=1e-5, lr_teacher=0.01, lr_labels=2.0, label_momentum=0.9, loss_gate=1.0,
                          pix_init="samples_predicted_correctly", zca=True),
    ("cifar10", 50): dict(syn_steps=80, expert_epochs=2, min_start_epoch=0, window_start=20,
                          max_start_epoch=40, window_growth_iterations=2000, batch_syn=500, lr_img=1000.0,
                          lr_lr=1e-5, lr_teacher=0.01, lr_labels=2.0, label_momentum=0.9, loss_gate=1.0,
                          pix_init="samples_predicted_correctly", zca=True),
    ("cifar100", 1): dict(syn_steps=40, expert_epochs=3, min_start_epoch=0, window_start=10,
                          max_start_epoch=20, window_growth_iterations=1000, batch_syn=None, lr_img=1000.0,
                          lr_lr=1e-5, lr_teacher=0.01, lr_labels=10.0, label_momentum=0.9, loss_gate=1.0,
                          pix_init="samples_predicted_correctly", zca=True),
    ("cifar100", 10): dict(syn_steps=80, expert_epochs=2, min_start_epoch=0, window_start=30,
                           max_start_epoch=50, window_growth_iterations=2000, batch_syn=None, lr_img=1000.0,
                           lr_lr=1e-5, lr_teacher=0.01, lr_labels=10.0, label_momentum=0.9, loss_gate=1.0,
                           pix_init="samples_predicted_correctly", zca=True),
    ("cifar100", 50): dict(syn_steps=80, expert_epochs=2, min_start_epoch=20, window_start=None,
                           max_start_epoch=70, window_growth_iterations=1000, batch_syn=1000, lr_img=1000.0,
                           lr_lr=1e-5, lr_teacher=0.01, lr_labels=10.0, label_momentum=0.9, loss_gate=1.0,
                           pix_init="real", zca=True),
    # Tiny ImageNet (ConvNetD4, 64 x 64): configs/TinyImageNet/ConvIN/IPC{1,10,50}.yaml (not in upstream.md; read
    # from the repository directly). IPC 10 and 50 set Sequential_Generation False (window off; the growth
    # iterations are unused); IPC 1's batch_syn 1000 exceeds its 200 images (= all).
    ("tinyimagenet", 1): dict(syn_steps=40, expert_epochs=2, min_start_epoch=0, window_start=15,
                              max_start_epoch=20, window_growth_iterations=2000, batch_syn=None, lr_img=1e4,
                              lr_lr=1e-4, lr_teacher=0.01, lr_labels=10.0, label_momentum=0.9, loss_gate=1.0,
                              pix_init="samples_predicted_correctly", zca=True),
    ("tinyimagenet", 10): dict(syn_steps=40, expert_epochs=2, min_start_epoch=10, window_start=None,
                               max_start_epoch=50, window_growth_iterations=1000, batch_syn=500, lr_img=100.0,
                               lr_lr=1e-4, lr_teacher=0.01, lr_labels=10.0, label_momentum=0.9, loss_gate=1.0,
                               pix_init="samples_predicted_correctly", zca=True),
    ("tinyimagenet", 50): dict(syn_steps=20, expert_epochs=2, min_start_epoch=40, window_start=None,
                               max_start_epoch=70, window_growth_iterations=1000, batch_syn=1000, lr_img=100.0,
                               lr_lr=1e-4, lr_teacher=0.01, lr_labels=10.0, label_momentum=0.9, loss_gate=1.0,
                               pix_init="samples_predicted_correctly", zca=True),
}


def datm_defaults(dataset: str, ipc: int) -> dict[str, Any]:
    """DATM's settings for ``dataset`` at ``ipc`` as a nested config dict (see :data:`DATM_TABLE`).

    Buffer: 100 experts x 100 epochs, GSAM (rho 0.01, alpha 0.3) around SGD lr 0.01, no
    momentum/weight decay, batch 256, DSA (the README's ``buffer_FTD.py`` command). Distill: the row,
    10000 iterations. Evaluation: the configs' ``num_eval`` 1, 1000 epochs, ``batch_train`` 128.
    """
    row, zca = table_row(DATM_TABLE, dataset, ipc)
    return method_defaults("datm", zca, buffer={"epochs": 100, "optimizer": "gsam", "rho": 0.01, "alpha": 0.3},
                           distill={"ipc": ipc, "iterations": 10000, **row}, eval={"num_eval": 1, "batch_size": 128})


def window_upper_bound(iteration: int, window_start: int | None, max_start_epoch: int,
                       growth_iterations: int) -> int:
    """DATM's exclusive upper end of the start-epoch window at ``iteration`` (0-based):
    ``min(T+, T' + int((T+ - T') * iteration / growth_iterations))`` with sequential generation
    (``window_start`` = T'), else ``max_start_epoch`` = T+."""
    if window_start is None:
        return max_start_epoch
    grown = window_start + int((max_start_epoch - window_start) * iteration / growth_iterations)
    return min(max_start_epoch, grown)


class DATMMatcher(TrajectoryMatcher):
    """The engine's matcher with DATM's growing start window.

    Args:
        window_start: T' (None = the fixed window ``[min_start_epoch, max_start_epoch)``).
        window_growth_iterations: iterations over which the window's upper end reaches ``max_start_epoch``.
        *args, **kwargs: as :class:`~tad_plugin.engine.matching.TrajectoryMatcher`.
    """

    def __init__(self, *args: Any, window_start: int | None, window_growth_iterations: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.config
        if window_start is not None and not c.min_start_epoch < window_start <= c.max_start_epoch:
            raise ValueError(f"window_start must lie in (min_start_epoch, max_start_epoch] = ({c.min_start_epoch}, "
                             f"{c.max_start_epoch}], got {window_start}")
        if window_growth_iterations < 1:
            raise ValueError(f"window_growth_iterations must be >= 1, got {window_growth_iterations}")
        self.window = (window_start, window_growth_iterations)

    def start_window(self, iteration: int) -> tuple[int, int]:
        c = self.config
        return c.min_start_epoch, window_upper_bound(iteration, self.window[0], c.max_start_epoch, self.window[1])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "window": list(self.window)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state.get("window", ())) != self.window:
            raise ValueError(f"checkpoint {self.checkpoint} was made with another start window "
                             f"({state.get('window')} vs {list(self.window)}); delete it or point checkpoint= "
                             f"elsewhere")
        super().load_state_dict(state)


@torch.no_grad()
def expert_logits(net: ConvNetConfig, params: Tensor, images: Tensor, experts_per_pass: int = 10,
                  images_per_pass: int = 256) -> Tensor:
    """Logits of every expert on every image: params float [E, P], images float [M, C, H, W] (model
    input, same device) -> float [E, M, num_classes], computed in chunks of experts x images."""
    out = []
    for i in range(0, params.shape[0], experts_per_pass):
        p = params[i:i + experts_per_pass]
        out.append(torch.cat([forward(net, p, images[j:j + images_per_pass])
                              for j in range(0, images.shape[0], images_per_pass)], dim=1))
    return torch.cat(out)


def soft_label_init(logits: Tensor, classes: Tensor) -> Tensor:
    """DATM's soft labels: per image, the mean logits over the experts that classify it as its class.

    Args:
        logits: float [E, M, C], the experts' logits of the M synthetic images.
        classes: int64 [M], each image's class.

    Returns:
        float [M, C]; an image no expert classifies correctly gets the mean over ALL experts (upstream
        divides by the zero count and gets NaN), so the result is finite whenever ``logits`` is.
    """
    if logits.dim() != 3 or classes.shape != (logits.shape[1],):
        raise ValueError(f"need logits [E, M, C] and classes [M], got {tuple(logits.shape)} and {tuple(classes.shape)}")
    correct = logits.argmax(-1) == classes.to(logits.device)  # [E, M]
    count = correct.sum(0)
    averaged = (logits * correct.unsqueeze(-1)).sum(0) / count.clamp_min(1).unsqueeze(-1)
    return torch.where((count > 0).unsqueeze(-1), averaged, logits.mean(0))


def predicted_correctly_indices(net: ConvNetConfig, expert_params: Iterable[Tensor], images: Tensor,
                                labels: Tensor, pool: Tensor, ipc: int, preprocess: Preprocessor,
                                generator: torch.Generator | None = None, batch_size: int = 1024,
                                device: torch.device | str = "cpu") -> Tensor:
    """``ipc`` pool samples per class that the experts classify as their label, class-major int64 [C * ipc].

    The candidates of each class are visited in a random order; those the first expert classifies
    correctly come first, then those of the next experts while the class is short; a class still
    short after the last expert is completed with random candidates (logged).

    Args:
        expert_params: float [P] per expert, in the order they are consulted (loaded lazily).
        images: uint8 [N, C, H, W] training images; labels: int64 [N], the labels to check against
            (TAD: the recalibrated ones); pool: int64 indices that may be used (TAD: the trusted space).
        device: where the experts classify (the preprocessor must work there).

    Raises:
        ValueError: a class has fewer than ``ipc`` pool samples (from :func:`real_init_indices`).
    """
    k = net.num_classes
    fallback = real_init_indices(labels, pool, ipc, k, generator=generator).view(k, ipc)  # also validates
    pool_labels = labels[pool]
    candidates = [pool[pool_labels == c][torch.randperm(int((pool_labels == c).sum()), generator=generator)]
                  for c in range(k)]
    chosen: list[list[int]] = [[] for _ in range(k)]
    for params in expert_params:
        short = [c for c in range(k) if len(chosen[c]) < ipc]
        if not short:
            break
        cand = torch.cat([candidates[c] for c in short])
        p = params.to(device).view(1, -1)
        _, correct = per_sample_losses(net, p, images[cand].to(device), labels[cand].to(device), preprocess,
                                       batch_size)
        good = cand[correct[0].cpu()]
        for c in short:
            taken = set(chosen[c])
            for i in good[labels[good] == c].tolist():
                if len(chosen[c]) == ipc:
                    break
                if i not in taken:
                    chosen[c].append(i)
    for c in range(k):
        if len(chosen[c]) < ipc:
            log.warning("class %d: the experts classify only %d of its candidates correctly; %d random "
                        "candidates complete it", c, len(chosen[c]), ipc - len(chosen[c]))
            taken = set(chosen[c])
            chosen[c] += [i for i in fallback[c].tolist() if i not in taken][:ipc - len(chosen[c])]
    return torch.tensor(chosen, dtype=torch.int64).flatten()


class DATM(Pipeline):
    """DATM's stages with TAD on or off (see the module docstring)."""

    name = "datm"
    defaults = staticmethod(datm_defaults)
    implements = frozenset({"window_start", "lr_labels"})
    pix_inits = ("real", "noise", "samples_predicted_correctly")

    def initial_images(self, store: TrajectoryStore, experts: Sequence[int], dataset: ImageDataset,
                       labels: Tensor, preprocess: Preprocessor, generator: torch.Generator) -> Tensor:
        """``pix_init = "samples_predicted_correctly"``: :func:`predicted_correctly_indices` over
        :meth:`init_pool` (the trusted space and its labels with TAD); else the engine's."""
        d = self.config.distill
        if d.pix_init != "samples_predicted_correctly":
            return super().initial_images(store, experts, dataset, labels, preprocess, generator)
        pool, pool_labels = self.init_pool(store, labels)
        finals = (store.trajectory(e)[-1] for e in experts)  # loaded only while a class is short
        idx = predicted_correctly_indices(self.network(dataset), finals, dataset.train_images, pool_labels, pool,
                                          d.ipc, preprocess, generator=generator,
                                          batch_size=self.config.buffer.eval_batch_size, device=self.device)
        return preprocess(dataset.train_images[idx].to(self.device))

    def initial_labels(self, store: TrajectoryStore, experts: Sequence[int], dataset: ImageDataset,
                       images: Tensor) -> Tensor:
        """Soft labels (``distill.lr_labels`` set): :func:`soft_label_init` of the experts' last-epoch
        logits divided by ``distill.label_temperature``, float [M, C]; hard class labels otherwise."""
        hard = super().initial_labels(store, experts, dataset, images)
        if self.config.distill.lr_labels is None:
            return hard
        # each expert after its last epoch (upstream's Label_Model_Timestamp = -1)
        params = torch.stack([store.trajectory(e)[-1] for e in experts]).to(self.device)
        logits = expert_logits(self.network(dataset), params, images.to(self.device))
        return soft_label_init(logits, hard.to(self.device)) / self.config.distill.label_temperature

    def make_matcher(self, *args: Any, **kwargs: Any) -> TrajectoryMatcher:
        d = self.config.distill
        return DATMMatcher(*args, window_start=d.window_start, window_growth_iterations=d.window_growth_iterations,
                           **kwargs)
