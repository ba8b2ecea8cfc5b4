"""Self-supervised feature extractor (SimCLR ResNet-18) used by the inner loop to embed samples and anchors.

Public API:

* :class:`FeatureExtractor` -- wraps any ``nn.Module`` that returns features; ``embed(images)`` takes
  uint8 NCHW (0..255) or float NCHW in [0, 1] images (undo ZCA / normalisation first);
* :func:`load_extractor`, :func:`save_extractor`, :func:`default_extractor_path` -- trained extractors
  (``tad features train`` writes ``~/.cache/tad_plugin/features/<dataset>.pt`` by default);
* :func:`train_simclr`, :class:`TrainConfig`, :class:`TrainResult` -- GPU-resident SimCLR training;
  ``TrainConfig(optimizer="lars")`` (:class:`LARS`) is the alternative to the default SGD recipe;
* :func:`augment_batch`, :class:`AugmentConfig`, :func:`nt_xent_loss`, :func:`cifar_resnet18`,
  :func:`knn_accuracy`, :class:`LARS` -- the parts.

Names are imported lazily so that ``import tad_plugin.features`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "FeatureExtractor": "extractor",
    "ExtractorFileError": "extractor",
    "load_extractor": "extractor",
    "save_extractor": "extractor",
    "default_extractor_path": "extractor",
    "train_simclr": "train",
    "TrainConfig": "train",
    "TrainResult": "train",
    "TrainingError": "train",
    "augment_batch": "augment",
    "AugmentConfig": "augment",
    "nt_xent_loss": "simclr",
    "SimCLRModel": "simclr",
    "cifar_resnet18": "resnet",
    "knn_accuracy": "knn",
    "knn_predict": "knn",
    "LARS": "lars",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .augment import AugmentConfig, augment_batch
    from .extractor import ExtractorFileError, FeatureExtractor, default_extractor_path, load_extractor, save_extractor
    from .knn import knn_accuracy, knn_predict
    from .lars import LARS
    from .resnet import cifar_resnet18
    from .simclr import SimCLRModel, nt_xent_loss
    from .train import TrainConfig, TrainingError, TrainResult, train_simclr


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'tad_plugin.features' has no attribute {name!r}")
