"""The labels an upstream script trains on: noise injected into its train set, and the trusted pool.

Upstream ``get_dataset`` returns ``dst_train`` (torchvision CIFAR with ``.targets``, or, with ``--zca``,
upstream's ``TensorDataset`` with ``.labels``) carrying the clean labels. The launcher hands the script
a :class:`Relabelled` view instead: the same images, in the same order (so ZCA, which upstream fits on
``dst_train`` before returning it, is untouched), with noisy labels for the buffer and, for distill,
only the trusted samples with their recalibrated labels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from ..noise import corrupt_labels

__all__ = ["Relabelled", "corrupt_labels", "dataset_labels"]  # corrupt_labels: noise.py's, re-exported


class Relabelled(Dataset[tuple[Any, int]]):
    """``base`` seen through new labels: item ``i`` is ``(base[indices[i]][0], labels[indices[i]])``.

    Args:
        base: the upstream dataset (items ``(image, label)``).
        labels: int64 [len(base)], the labels to hand out.
        indices: int64 [M] of ``base`` to keep, in order; None = all.
    """

    def __init__(self, base: Any, labels: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        if labels.shape != (len(base),):
            raise ValueError(f"labels {tuple(labels.shape)} must be [len(dst_train)] = [{len(base)}]")
        self.base, self.labels = base, labels.to(torch.int64).cpu()
        self.indices = torch.arange(len(base)) if indices is None else indices.to(torch.int64).cpu()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        j = int(self.indices[i])
        return self.base[j][0], int(self.labels[j])

    @property
    def targets(self) -> list[int]:
        """The handed-out labels in item order (torchvision's attribute; never the base's clean ones)."""
        return self.labels[self.indices].tolist()

    def __getattr__(self, name: str) -> Any:  # classes, transform, ... of the base dataset
        if name in ("base", "labels", "indices"):
            raise AttributeError(name)
        return getattr(self.base, name)


def dataset_labels(dataset: Any) -> torch.Tensor:
    """The labels of an upstream ``dst_train`` as int64 [N] (``.targets``, ``.labels`` or one pass)."""
    for attr in ("targets", "labels"):
        value = getattr(dataset, attr, None)
        if value is not None and len(value) == len(dataset):
            return torch.as_tensor(value, dtype=torch.int64).cpu().clone()
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.int64)
