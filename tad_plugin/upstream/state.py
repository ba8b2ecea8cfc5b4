"""What a wrapped buffer run leaves for the wrapped distill run: the labels and the experts' trust votes."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_torch_save, torch_load
from ..noise import noise_rate

__all__ = ["TrustState", "default_state_path", "STATE_DIR_ENV"]

#: Names the folder under which ``tad wrap`` keeps each checkout's trust state (default ``~/.cache/tad_plugin/wrap``).
STATE_DIR_ENV = "TAD_PLUGIN_WRAP"


def default_state_path(repo: str | os.PathLike[str]) -> Path:
    """The trust-state file of checkout ``repo`` when no ``--state`` is given:
    ``$TAD_PLUGIN_WRAP/<checkout name>-<8 hex digits of its absolute path>/state.pt``, with ``TAD_PLUGIN_WRAP``
    defaulting to ``~/.cache/tad_plugin/wrap``: outside the checkout (nothing is written into it), one folder
    per checkout, the same for its buffer and distill runs."""
    root = Path(repo).expanduser().resolve()
    base = Path(os.environ.get(STATE_DIR_ENV, Path.home() / ".cache" / "tad_plugin" / "wrap"))
    return base / f"{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:8]}" / "state.pt"


@dataclass
class TrustState:
    """The trust state shared by a wrapped buffer run and the distill runs that consume its experts.

    Attributes:
        clean_labels: int64 [N], the labels upstream's ``get_dataset`` returned.
        noisy_labels: int64 [N], the labels the experts started from (noise injected).
        trusted_votes: int32 [N], how many experts had the sample in their last epoch's trusted space.
        label_votes: int32 [N, C], how many experts ended with each label for the sample.
        experts: number of experts added.
    """

    clean_labels: torch.Tensor
    noisy_labels: torch.Tensor
    trusted_votes: torch.Tensor
    label_votes: torch.Tensor
    experts: int = 0

    @classmethod
    def empty(cls, clean: torch.Tensor, noisy: torch.Tensor, num_classes: int) -> TrustState:
        n = len(noisy)
        return cls(clean.clone(), noisy.clone(), torch.zeros(n, dtype=torch.int32),
                   torch.zeros(n, num_classes, dtype=torch.int32))

    def add_expert(self, trusted: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one finished expert's last trusted space (bool [N]) and labels (int64 [N])."""
        self.trusted_votes += trusted.cpu().to(torch.int32)
        self.label_votes[torch.arange(len(labels)), labels.cpu()] += 1
        self.experts += 1

    def pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices, labels)``: the samples trusted by at least half of the experts (int64 [M],
        ascending) and every sample's most common final label (int64 [N]; ties -> the lower class).

        Raises:
            ValueError: no expert was added, or no sample is trusted by half of them.
        """
        if self.experts == 0:
            raise ValueError("the trust state holds no finished expert; run the buffer script with tad wrap first")
        idx = torch.nonzero(self.trusted_votes.float() / self.experts >= 0.5).flatten()
        if idx.numel() == 0:
            raise ValueError("no sample is trusted by half of the experts; check the buffer run's TAD settings")
        return idx, self.label_votes.argmax(1)

    def summary(self) -> dict[str, float | int]:
        """Sizes and, against the clean labels, precision of the trusted pool and the labels' noise rate."""
        idx, labels = self.pool()
        clean = labels[idx] == self.clean_labels[idx]
        return {"experts": self.experts, "train_size": len(self.noisy_labels), "trusted_size": len(idx),
                "injected_noise_rate": noise_rate(self.noisy_labels, self.clean_labels),
                "trusted_precision": float(clean.float().mean())}

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_torch_save({"clean_labels": self.clean_labels, "noisy_labels": self.noisy_labels,
                           "trusted_votes": self.trusted_votes, "label_votes": self.label_votes,
                           "experts": self.experts}, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrustState:
        """Raises FileNotFoundError (with the fix) when ``path`` does not exist."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"trust state {path} does not exist: run the buffer script through "
                                    f"`tad wrap` with the same --state first")
        try:
            d = torch_load(path)
        except ValueError as exc:
            raise ValueError(f"cannot read trust state {path}: {exc}; rerun the buffer script through `tad wrap` "
                             f"to write it again") from exc
        try:
            return cls(d["clean_labels"], d["noisy_labels"], d["trusted_votes"], d["label_votes"], int(d["experts"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a trust state (no entry {exc}); rerun the buffer script through `tad "
                             f"wrap` to write it again") from exc
