"""MTT (Cazenavette et al., 2022) with Trust-Aware Diversion switchable on and off.

MTT's two scripts on the engine's :class:`~tad_plugin.engine.pipeline.Pipeline`; this module holds only
what is MTT-specific: its hyper-parameter table.

* ``buffer``  (upstream ``buffer.py``): experts trained with plain SGD (lr 0.01, no momentum, no weight
  decay, batch 256, DSA, 50 epochs, constant lr). With TAD the training set is the trusted space of
  each expert (outer loop, after a warm-up) and the criterion is ``expert_loss`` (CE + lambda*RCE);
  without TAD it is the noisy baseline (all samples, CE).
* ``distill`` (upstream ``distill.py``): trajectory matching; images initialised from real samples of
  each class (``pix_init="real"``). With TAD the candidates are the trusted space the experts ended
  with (samples trusted by at least half of them, with their current labels) -- otherwise a
  mislabelled image would start in the wrong class.
* ``evaluate``: fresh ConvNets trained on the distilled set, tested on the clean test set.

Example::

    from tad_plugin.adapters.mtt import MTT, mtt_defaults
    from tad_plugin.engine.config import build_config

    cfg = build_config(mtt_defaults("cifar10", ipc=10), sets=["data.dataset=cifar10", "tad.enabled=true"])
    mtt = MTT(cfg)
    store = mtt.buffer(dataset, noisy_labels, "runs/c10/buffer")
    result = mtt.distill(store, dataset)
    print(mtt.evaluate(result, dataset).mean)
"""

from __future__ import annotations

from typing import Any

from tad_plugin.engine.pipeline import Pipeline, method_defaults, table_row

__all__ = ["MTT", "MTT_TABLE", "mtt_defaults"]

#: MTT's per-setting hyper-parameters (dc_benchmark's table "provided by the author"; upstream.md 2.4).
#: ``batch_syn`` None = all synthetic images per inner step.
MTT_TABLE: dict[tuple[str, int], dict[str, Any]] = {
    ("cifar10", 1): dict(syn_steps=50, expert_epochs=2, max_start_epoch=2, lr_img=100.0, lr_lr=1e-7,
                         lr_teacher=0.01, batch_syn=None, zca=True),
    ("cifar10", 10): dict(syn_steps=30, expert_epochs=2, max_start_epoch=20, lr_img=100.0, lr_lr=1e-5,
                          lr_teacher=0.001, batch_syn=None, zca=True),
    ("cifar10", 50): dict(syn_steps=30, expert_epochs=2, max_start_epoch=40, lr_img=1000.0, lr_lr=1e-5,
                          lr_teacher=0.001, batch_syn=None, zca=False),
    ("cifar100", 1): dict(syn_steps=20, expert_epochs=3, max_start_epoch=20, lr_img=1000.0, lr_lr=1e-5,
                          lr_teacher=0.01, batch_syn=None, zca=True),
    ("cifar100", 10): dict(syn_steps=20, expert_epochs=2, max_start_epoch=20, lr_img=1000.0, lr_lr=1e-5,
                           lr_teacher=0.01, batch_syn=None, zca=False),
    ("cifar100", 50): dict(syn_steps=80, expert_epochs=2, max_start_epoch=40, lr_img=1000.0, lr_lr=1e-5,
                           lr_teacher=0.01, batch_syn=125, zca=True),
    # Tiny ImageNet (ConvNet-D4, 64 x 64): the same dc_benchmark page's Tiny commands, which upstream.md does not
    # copy (read from justincui03/dc_benchmark methods/tm/readme.md directly); no --zca in any of them.
    ("tinyimagenet", 1): dict(syn_steps=10, expert_epochs=2, max_start_epoch=10, lr_img=1e4, lr_lr=1e-4,
                              lr_teacher=0.01, batch_syn=None, zca=False),
    ("tinyimagenet", 10): dict(syn_steps=20, expert_epochs=2, max_start_epoch=40, lr_img=1e4, lr_lr=1e-4,
                               lr_teacher=0.01, batch_syn=200, zca=False),
    ("tinyimagenet", 50): dict(syn_steps=20, expert_epochs=2, max_start_epoch=40, lr_img=1e4, lr_lr=1e-4,
                               lr_teacher=0.01, batch_syn=300, zca=False),
}


def mtt_defaults(dataset: str, ipc: int) -> dict[str, Any]:
    """MTT's settings for ``dataset`` (``"cifar10"``, ``"cifar100"``, ``"tinyimagenet"``, else generic) at ``ipc``, as a
    nested config dict for :func:`tad_plugin.engine.config.build_config`.

    Buffer: 100 experts x 50 epochs, SGD lr 0.01, no momentum/weight decay, batch 256, DSA.
    Distill: the :data:`MTT_TABLE` row (an unlisted dataset/IPC gets the nearest CIFAR-10 row),
    5000 iterations, real initialisation. Evaluation: 5 nets x 1000 epochs, batch 256.
    """
    row, zca = table_row(MTT_TABLE, dataset, ipc)
    return method_defaults("mtt", zca, distill={"ipc": ipc, **row})


class MTT(Pipeline):
    """MTT's buffer, distill and evaluation stages with TAD on (``config.tad.enabled``) or off; every
    stage is the engine's :class:`~tad_plugin.engine.pipeline.Pipeline` unchanged."""

    name = "mtt"
    defaults = staticmethod(mtt_defaults)
