"""Expert trajectories on disk: our own safe, atomic, resumable format plus the upstream export.

Layout of a trajectory store (a directory)::

    manifest.json          format version, parameter shapes, epochs, N, C, free-form ``meta``
    preprocess.pt          the Preprocessor/ZCA state the experts were trained with (optional)
    experts/expert_00007.pt  one file per finished expert (see :class:`ExpertRecord`)

Every file is written through :mod:`tad_plugin.files` (temporary file + rename), so a killed run
leaves only complete files, and everything loads with ``torch.load(..., weights_only=True)``.

Resume granularity: **one expert**. An expert file exists only once its whole trajectory is done;
:meth:`TrajectoryStore.finished` lists them and the trainer skips them on restart. Experts that
were in flight when the run died are retrained from their initialisation (their seeds are derived
from the run seed and the expert index, and a group of experts trained together is retrained whole, so
the retrained trajectory is the same one).

:meth:`TrajectoryStore.export_upstream` writes MTT/FTD/DATM/ATT's ``replay_buffer_{n}.pt`` files:
a list of up to ``per_file`` trajectories, each a list of ``epochs + 1`` snapshots, each a list of
CPU float32 tensors in ``ConvNet.parameters()`` order, so the official distill scripts can consume
our experts.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TADError
from ..files import atomic_torch_save, atomic_write_json, torch_load

__all__ = ["FORMAT", "TrajectoryError", "ExpertRecord", "TrajectoryStore", "load_upstream_buffer",
           "split_flat"]

#: Format tag written into every manifest; bumped on incompatible changes.
FORMAT = "tad_plugin.trajectories/1"
_EXPERT_RE = re.compile(r"^expert_(\d{5})\.pt$")


class TrajectoryError(TADError, ValueError):
    """A trajectory store or file is missing, corrupt or does not match; the message says how to fix it."""


@dataclass(frozen=True)
class ExpertRecord:
    """One finished expert.

    Attributes:
        index: the expert's index in the store (0-based).
        params: float32 [T+1, P]; the flat parameters at initialisation and after each of T epochs
            (flat order = ``ConvNet.parameters()`` order, see the engine's ``flatten``).
        test_acc: float32 [T]; clean test accuracy after each epoch (logging only).
        train_loss: float32 [T]; mean training criterion over each epoch.
        trusted: bool [T, N] or None; ``trusted[t]`` is the trusted space epoch t trained on
            (all True during the warm-up). None when TAD was off.
        thresholds: float32 [T, C] or None; the class-wise tau_c of the split used for epoch t (NaN
            where no split had been made yet). None when TAD was off.
        label_epochs: int64 [U]; ascending epochs from which each row of ``labels`` applies; the first
            is 0. U = 1 unless recalibration changed labels.
        labels: int64 [U, N]; the labels the expert trained on (see :meth:`labels_at`).
        seed: the seed the expert's initialisation was drawn from.
    """

    index: int
    params: torch.Tensor
    test_acc: torch.Tensor
    train_loss: torch.Tensor
    trusted: torch.Tensor | None
    thresholds: torch.Tensor | None
    label_epochs: torch.Tensor
    labels: torch.Tensor
    seed: int

    @property
    def epochs(self) -> int:
        return int(self.params.shape[0]) - 1

    def labels_at(self, epoch: int) -> torch.Tensor:
        """int64 [N]: the labels expert training used in ``epoch`` (0-based)."""
        row = int(torch.searchsorted(self.label_epochs, torch.tensor(epoch), right=True)) - 1
        return self.labels[max(row, 0)]

    def validate(self, param_count: int, epochs: int, num_train: int) -> None:
        """Raise :class:`TrajectoryError` unless every field has the documented shape and dtype."""
        t = epochs
        checks = [
            ("params", self.params, torch.float32, (t + 1, param_count)),
            ("test_acc", self.test_acc, torch.float32, (t,)),
            ("train_loss", self.train_loss, torch.float32, (t,)),
            ("label_epochs", self.label_epochs, torch.int64, (self.labels.shape[0],)),
            ("labels", self.labels, torch.int64, (self.labels.shape[0], num_train)),
        ]
        if self.trusted is not None:
            checks.append(("trusted", self.trusted, torch.bool, (t, num_train)))
        if self.thresholds is not None:
            checks.append(("thresholds", self.thresholds, torch.float32, (t, self.thresholds.shape[1])))
        for name, tensor, dtype, shape in checks:
            if tensor.dtype != dtype or tuple(tensor.shape) != shape:
                raise TrajectoryError(f"expert {self.index}: {name} must be {dtype} {shape}, got "
                                      f"{tensor.dtype} {tuple(tensor.shape)}")
        if self.labels.shape[0] < 1 or int(self.label_epochs[0]) != 0:
            raise TrajectoryError(f"expert {self.index}: labels must start at epoch 0")
        if not torch.isfinite(self.params).all():
            raise TrajectoryError(f"expert {self.index}: its trajectory holds NaN/inf parameters (the "
                                  f"expert diverged); lower the expert learning rate and retrain it")


def _pack_bool(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.cpu().numpy().astype(np.uint8), axis=-1))


def _unpack_bool(packed: torch.Tensor, n: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed.numpy(), axis=-1, count=n).astype(bool))


def _label_dtype(num_classes: int) -> torch.dtype:
    return torch.uint8 if num_classes <= 256 else torch.int32


def split_flat(flat: torch.Tensor, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Cut a flat parameter vector [P] into tensors of ``shapes`` (in order); copies, contiguous."""
    sizes = [math.prod(s) for s in shapes]
    if flat.dim() != 1 or flat.numel() != sum(sizes):
        raise TrajectoryError(f"flat parameters of shape {tuple(flat.shape)} do not match the "
                              f"{sum(sizes)} parameters of shapes {list(map(tuple, shapes))}")
    return [p.reshape(tuple(s)).clone() for p, s in zip(torch.split(flat, sizes), shapes)]


class TrajectoryStore:
    """A directory of expert trajectories (see the module docstring for the layout).

    Use :meth:`create` to start or resume a store for training and :meth:`open` to read one.
    """

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest

    # ------------------------------------------------------------------ creation / opening
    @classmethod
    def create(cls, root: str | os.PathLike[str], *, param_shapes: Sequence[Sequence[int]], epochs: int,
               num_train: int, num_classes: int, meta: dict[str, Any] | None = None,
               preprocess_state: dict[str, Any] | None = None, dry_run: bool = False) -> TrajectoryStore | None:
        """Create a store at ``root``, or reopen it for resuming if it was made with the same settings.

        Args:
            param_shapes: shapes of the network's parameters in ``parameters()`` order.
            epochs: T, the epochs per expert (each trajectory has T+1 snapshots).
            num_train: N, training-set size (for the trusted masks and labels).
            num_classes: C.
            meta: JSON-serialisable settings that must match on resume (expert and data config).
            preprocess_state: the Preprocessor's state (tensors/numbers/strings), saved once.
            dry_run: only check that ``root`` could be resumed (write nothing; None when it holds no store yet).

        Raises:
            TrajectoryError: ``root`` holds a store made with different settings.
        """
        root = Path(root)
        manifest = {
            "format": FORMAT,
            "param_shapes": [list(map(int, s)) for s in param_shapes],
            "param_count": int(sum(math.prod(s) for s in param_shapes)),
            "epochs": int(epochs),
            "num_train": int(num_train),
            "num_classes": int(num_classes),
            "meta": json.loads(json.dumps(meta or {}, default=str)),
        }
        if (root / "manifest.json").exists():
            old = cls.open(root).manifest
            diff = sorted(k for k in manifest if old.get(k) != manifest[k])
            if diff:
                detail = "; ".join(_describe_diff(k, old.get(k), manifest[k]) for k in diff)
                raise TrajectoryError(f"{root} already holds expert trajectories made with other settings "
                                      f"({detail}); choose another output directory or delete {root}")
            if preprocess_state is not None and not dry_run and not (root / "preprocess.pt").is_file():
                atomic_torch_save(preprocess_state, root / "preprocess.pt")  # a run killed between the two writes
            return cls(root, old)
        if dry_run:
            return None
        if preprocess_state is not None:  # before the manifest, which marks the store as made
            atomic_torch_save(preprocess_state, root / "preprocess.pt")
        atomic_write_json(manifest, root / "manifest.json")
        return cls(root, manifest)

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> TrajectoryStore:
        """Open an existing store for reading. Raises :class:`TrajectoryError` if it is not one."""
        root = Path(root)
        path = root / "manifest.json"
        if not path.is_file():
            made = f"`tad buffer --out {root.parent}` trains them there" if root.name == "buffer" else \
                "`tad buffer --out DIR` trains them into DIR/buffer"
            raise TrajectoryError(f"{root} is not a trajectory store (no manifest.json); train the experts first: "
                                  f"{made}")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TrajectoryError(f"cannot read {path}: {exc}; delete {root} and retrain") from exc
        if not isinstance(manifest, dict) or "format" not in manifest:
            raise TrajectoryError(f"{path} is not a trajectory store's manifest (a JSON object with a format); "
                                  f"delete {root} and retrain")
        if manifest["format"] != FORMAT:
            raise TrajectoryError(f"{path} has format {manifest['format']!r}, "
                                  f"expected {FORMAT!r}; retrain the experts with this version")
        return cls(root, manifest)

    # ------------------------------------------------------------------ properties
    @property
    def param_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.manifest["param_shapes"]]

    @property
    def param_count(self) -> int:
        return int(self.manifest["param_count"])

    @property
    def epochs(self) -> int:
        return int(self.manifest["epochs"])

    @property
    def num_train(self) -> int:
        return int(self.manifest["num_train"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.manifest["meta"])

    def expert_path(self, index: int) -> Path:
        return self.root / "experts" / f"expert_{index:05d}.pt"

    def finished(self) -> list[int]:
        """Indices of the experts whose files exist (complete by construction), ascending."""
        folder = self.root / "experts"
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _EXPERT_RE.match(p.name)))

    def __len__(self) -> int:
        return len(self.finished())

    # ------------------------------------------------------------------ experts
    def save_expert(self, record: ExpertRecord) -> Path:
        """Validate ``record`` and write it atomically; returns its path."""
        record.validate(self.param_count, self.epochs, self.num_train)
        payload: dict[str, Any] = {
            "index": record.index,
            "seed": record.seed,
            "params": record.params.detach().cpu().contiguous(),
            "test_acc": record.test_acc.cpu(),
            "train_loss": record.train_loss.cpu(),
            "label_epochs": record.label_epochs.cpu(),
            "labels": record.labels.cpu().to(_label_dtype(self.num_classes)),
        }
        if record.trusted is not None:
            payload["trusted_packed"] = _pack_bool(record.trusted)
        if record.thresholds is not None:
            payload["thresholds"] = record.thresholds.cpu()
        path = self.expert_path(record.index)
        atomic_torch_save(payload, path)
        return path

    def _load_payload(self, index: int, mmap: bool = False) -> dict[str, Any]:
        path = self.expert_path(index)
        if not path.is_file():
            raise TrajectoryError(f"expert {index} is not in {self.root} (finished: {len(self)}); "
                                  f"train it first (`tad buffer --out {self.root}` resumes)")
        try:
            payload = torch_load(path, mmap=mmap)
        except Exception as exc:  # zip/pickle errors, truncated files
            raise TrajectoryError(f"cannot load {path}: {exc}; delete the file and rerun the command that trained "
                                  f"the experts (it resumes and retrains that expert)") from exc
        if not isinstance(payload, dict) or "params" not in payload:
            raise TrajectoryError(f"{path} is not an expert file of {FORMAT}; delete it and retrain")
        if payload.get("index") != index:  # a file copied or renamed onto another expert's name
            raise TrajectoryError(f"{path} holds expert {payload.get('index')}, not expert {index}; delete it and "
                                  f"retrain that expert")
        return payload

    def load_expert(self, index: int) -> ExpertRecord:
        """Load and validate one expert. Raises :class:`TrajectoryError` if missing or corrupt."""
        p = self._load_payload(index)
        try:
            trusted = p.get("trusted_packed")
            record = ExpertRecord(
                index=int(p["index"]), params=p["params"], test_acc=p["test_acc"],
                train_loss=p["train_loss"],
                trusted=None if trusted is None else _unpack_bool(trusted, self.num_train),
                thresholds=p.get("thresholds"), label_epochs=p["label_epochs"],
                labels=p["labels"].to(torch.int64), seed=int(p["seed"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise TrajectoryError(f"{self.expert_path(index)} is incomplete ({exc}); delete it and "
                                  f"retrain that expert") from exc
        record.validate(self.param_count, self.epochs, self.num_train)
        return record

    def trajectory(self, index: int) -> torch.Tensor:
        """float32 [T+1, P]: only the parameter snapshots of one expert (memory-mapped, read-only)."""
        params = self._load_payload(index, mmap=True)["params"]
        if params.dtype != torch.float32 or tuple(params.shape) != (self.epochs + 1, self.param_count):
            raise TrajectoryError(f"{self.expert_path(index)}: params are {params.dtype} "
                                  f"{tuple(params.shape)}, expected float32 {(self.epochs + 1, self.param_count)}")
        return params

    def final_trust(self, experts: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The experts' last trusted spaces and labels, combined by vote.

        Returns:
            ``(votes, labels)``: float32 [N], the fraction of the experts whose last epoch trained on
            each sample; int64 [N], the most common last-epoch label of each sample. None when the
            experts were trained without TAD. Reads only these fields (memory-mapped).
        """
        indices = list(self.finished() if experts is None else experts)
        if not indices:
            raise TrajectoryError(f"{self.root} has no finished experts; run `tad buffer` first")
        votes = torch.zeros(self.num_train)
        labels = []
        for i in indices:
            p = self._load_payload(i, mmap=True)
            if "trusted_packed" not in p:
                return None
            votes += _unpack_bool(p["trusted_packed"][-1:].clone(), self.num_train)[0].float()
            labels.append(p["labels"][-1].to(torch.int64))
        return votes / len(indices), torch.stack(labels).mode(dim=0).values

    def test_accuracy(self, experts: Sequence[int] | None = None) -> torch.Tensor:
        """float32 [E, T]: each expert's clean test accuracy (a fraction) after each of its T epochs, for
        ``experts`` (None: every finished one), in that order. Reads only this field (memory-mapped). Raises
        :class:`TrajectoryError` when there are no finished experts."""
        indices = list(self.finished() if experts is None else experts)
        if not indices:
            raise TrajectoryError(f"{self.root} has no finished experts; run `tad buffer` first")
        return torch.stack([self._load_payload(i, mmap=True)["test_acc"].float().clone() for i in indices])

    def preprocess_state(self) -> dict[str, Any] | None:
        """The saved Preprocessor state, or None if the store has none."""
        path = self.root / "preprocess.pt"
        if not path.is_file():
            return None
        try:
            return torch_load(path)
        except Exception as exc:
            raise TrajectoryError(f"cannot load {path}: {exc}; delete that file and rerun the command that trained "
                                  f"the experts: it fits the preprocessing on the same data again and keeps the "
                                  f"experts") from exc

    # ------------------------------------------------------------------ upstream interop
    def export_upstream(self, out_dir: str | os.PathLike[str], per_file: int = 10,
                        experts: Sequence[int] | None = None) -> list[Path]:
        """Write ``replay_buffer_{n}.pt`` files the official MTT/FTD/DATM/ATT distill scripts read.

        Each file is a list of up to ``per_file`` trajectories (upstream's ``save_interval`` is 10);
        each trajectory a list of T+1 snapshots; each snapshot a list of CPU float32 tensors in
        ``ConvNet.parameters()`` order. Point upstream's ``--buffer_path`` at the directory above
        ``{dataset}[_NO_ZCA]/{model}`` and copy the files there.

        Args:
            out_dir: directory for the files (created).
            per_file: trajectories per file, >= 1.
            experts: which experts, in order; None = all finished ones.
        """
        if per_file < 1:
            raise TrajectoryError(f"per_file must be >= 1, got {per_file}")
        indices = list(self.finished() if experts is None else experts)
        if not indices:
            raise TrajectoryError(f"{self.root} has no finished experts to export; run `tad buffer` first")
        shapes = self.param_shapes
        paths = []
        for n, start in enumerate(range(0, len(indices), per_file)):
            buffer = [[split_flat(snap, shapes) for snap in self.trajectory(i)]
                      for i in indices[start:start + per_file]]
            path = Path(out_dir) / f"replay_buffer_{n}.pt"
            atomic_torch_save(buffer, path)
            paths.append(path)
        return paths


def load_upstream_buffer(path: str | os.PathLike[str]) -> list[torch.Tensor]:
    """Read an upstream ``replay_buffer_{n}.pt`` (safely) as flat trajectories, float32 [T+1, P] each."""
    try:
        buffer = torch_load(path)
    except Exception as exc:
        raise TrajectoryError(f"cannot load upstream buffer {path}: {exc}") from exc
    if not isinstance(buffer, list) or not all(isinstance(t, list) and t for t in buffer):
        raise TrajectoryError(f"{path} is not a replay buffer (a list of trajectories, each a list of snapshots)")
    out = []
    for traj in buffer:
        snaps = [torch.cat([p.reshape(-1).float() for p in snap]) for snap in traj]
        out.append(torch.stack(snaps))
    return out


def _describe_diff(key: str, old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return ", ".join(f"{key}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:5])
    return f"{key}: {old!r} -> {new!r}"
