"""Label audit: which training labels are wrong, what they should be, how sure that is -- from TAD's experts
or from confident learning -- and the files that say so.

Two sources of an :class:`AuditTable` (one row per training sample):

* :func:`audit_experts`: TAD's experts (a trajectory store trained with TAD). Their records hold, per
  expert, the trusted space of every epoch and the labels after every recalibration; one no-augmentation
  pass of each expert's final parameters over the training set under the *given* labels adds the division
  confidence (the ``filter_dataset`` hook on those losses) and the experts' predictions; passes of the
  parameters of their last few epochs add the softmax averaged over experts and epochs (the fallback
  suggestion).
* :func:`confident_learning_table`: cleanlab's ``find_label_issues`` on out-of-sample probabilities, e.g.
  each sample's from :func:`fold_probabilities` of the ConvNet that did not train on its fold (K ConvNets,
  each trained with plain cross-entropy on the other folds of :func:`kfold_assignment`).

:func:`write_audit` writes the table, the ranked issues, the cleaned label file, the report and (optionally)
a pruned arrays file; :func:`detection_metrics` scores a table against the clean labels, and
:func:`write_detection_table` gathers the scores of many audit runs into one table.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checks import check_labels, check_tensors
from ..data import ImageDataset, save_arrays
from ..files import atomic_write, atomic_write_json
from ..manager import TADHooks
from .convnet import ConvNetConfig, forward
from .preprocess import Preprocessor
from .trajectories import TrajectoryError, TrajectoryStore

__all__ = ["AuditTable", "audit_experts", "trust_rounds", "confident_learning_table", "kfold_assignment",
           "fold_probabilities", "detection_metrics", "write_audit", "write_pruned", "LABEL_FILE", "TABLE_FILE",
           "CLEANED_KEY", "GIVEN_KEY", "CLEAN_KEY"]

#: File names inside an audit's output folder.
TABLE_FILE = "label_issues.csv"
RANKED_FILE = "label_issues_ranked"
LABEL_FILE = "labels_cleaned.npz"
REPORT_FILE = "audit_report"
#: Label sets of :data:`LABEL_FILE` (``--cifar-n FILE --label-set KEY``).
CLEANED_KEY, GIVEN_KEY, CLEAN_KEY = "cleaned_label", "given_label", "clean_label"


@dataclass(frozen=True)
class AuditTable:
    """The audit of a labelled training set, one entry per sample (all CPU tensors of length N).

    Attributes:
        given: int64, the labels audited.
        suggested: int64, the label the method proposes: the given one where it is not an issue; for an
            issue, TAD's recalibrated label held by most experts where it differs from the given one, else the
            argmax of the experts' softmax averaged over the experts and the parameters of their last few
            epochs (:func:`audit_experts`' ``snapshots``; cleanlab: the argmax of the out-of-sample
            probabilities).
        is_label_issue: bool, True = the given label is judged wrong. TAD: fewer than half of the experts
            trusted the sample *with its given label* at their last epoch (an untrusted sample, or one trusted
            only under a recalibrated label). cleanlab: flagged by ``find_label_issues``.
        trusted: bool, ``~is_label_issue`` (the majority's trusted space, given labels; cleanlab: not flagged).
        trust_vote: float in [0, 1], the fraction of experts that trusted the sample with its given label at
            their last epoch (cleanlab: 1 - is_label_issue).
        division_confidence: float in [0, 1], the posterior that the given label is clean: the mean over the
            experts of ``filter_dataset``'s confidence w_i on the final parameters' losses under the given
            labels (cleanlab: the self-confidence, the out-of-sample probability of the given label).
        reliability: float in [0, 1], support for the suggested label: the fraction of experts whose final
            parameters predict it (cleanlab: its out-of-sample probability).
        score: float in [0, 1], rank score, higher = more likely wrong. TAD: the mean of ``1 - trust_vote``
            and ``1 - division_confidence``; cleanlab: ``1 - division_confidence`` (its self-confidence rank).
        clean: int64 or None, the true labels when known (synthetic noise, CIFAR-N).
        method: ``"tad"`` or ``"cleanlab"``.
    """

    given: torch.Tensor
    suggested: torch.Tensor
    is_label_issue: torch.Tensor
    trust_vote: torch.Tensor
    division_confidence: torch.Tensor
    reliability: torch.Tensor
    score: torch.Tensor
    clean: torch.Tensor | None = None
    method: str = "tad"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "method" and value is not None and not isinstance(value, torch.Tensor):
                raise ValueError(f"AuditTable.{f.name} must be a torch.Tensor, got {type(value).__name__}; convert "
                                 f"with torch.as_tensor")
        n = self.given.shape[0]
        if n == 0:
            raise ValueError("AuditTable holds no samples: audit a dataset of at least one training sample")
        for name in ("given", "suggested", "clean"):
            value = getattr(self, name)
            if value is not None and (value.dtype != torch.int64 or value.shape != (n,)):
                raise ValueError(f"AuditTable.{name} must be int64 [{n}], got {value.dtype} {tuple(value.shape)}")
            if value is not None and int(value.min()) < 0:
                raise ValueError(f"AuditTable.{name} holds the negative class {int(value.min())}")
        if self.is_label_issue.dtype != torch.bool or self.is_label_issue.shape != (n,):
            raise ValueError(f"AuditTable.is_label_issue must be bool [{n}]")
        for name in ("trust_vote", "division_confidence", "reliability", "score"):
            value = getattr(self, name)
            if not value.is_floating_point() or value.shape != (n,):
                raise ValueError(f"AuditTable.{name} must be float [{n}], got {value.dtype} {tuple(value.shape)}")
        if not bool(torch.isfinite(self.score).all()):
            raise ValueError("AuditTable.score holds NaN or inf: the ranking would be meaningless; check the "
                             "detector's losses or probabilities")

    @property
    def trusted(self) -> torch.Tensor:
        return ~self.is_label_issue

    @property
    def cleaned(self) -> torch.Tensor:
        """int64 [N]: the suggested labels of the issues, the given labels elsewhere (= ``suggested``)."""
        return torch.where(self.is_label_issue, self.suggested, self.given)

    def ranked(self) -> torch.Tensor:
        """int64 indices of the issues, highest score first (ties: lower index first)."""
        idx = torch.nonzero(self.is_label_issue).flatten()
        return idx[torch.argsort(self.score[idx], descending=True, stable=True)]


def audit_experts(store: TrajectoryStore, net: ConvNetConfig, preprocess: Preprocessor, images: torch.Tensor,
                  labels: torch.Tensor, hooks: TADHooks, *, clean_labels: torch.Tensor | None = None,
                  experts: Sequence[int] | None = None, device: torch.device | str = "cpu", group: int = 10,
                  batch_size: int = 2048, snapshots: int = 5, progress: bool = False) -> AuditTable:
    """The audit from TAD's experts (see :class:`AuditTable` for every column's definition).

    Args:
        store: a trajectory store trained with TAD (its experts have trust records).
        net: the experts' ConvNet; preprocess: their input transform (the store's).
        images: uint8 [N, C, H, W], the training images in the store's order.
        labels: int64 [N], the given labels the experts were trained from.
        hooks: ``filter_dataset`` gives the division confidence (the run's hooks: TAD's GMM by default).
        clean_labels: int64 [N] or None, kept in the table for scoring.
        experts: which finished experts (None = all).
        group: experts evaluated in one batched pass; batch_size: images per chunk of that pass.
        snapshots: how many of each expert's last epochs' parameters average their softmax for the fallback
            suggestion (fewer when an expert has fewer epochs); default 5: averaging over the end of the
            trajectory steadies the last epoch's predictions, while earlier epochs still fit the noise less.
        device: where the passes run; the table's tensors are on the CPU whatever it is.
        progress: show a progress bar over the expert groups.

    Returns:
        The :class:`AuditTable`: one row per training sample, CPU tensors [N].

    Raises:
        TrajectoryError: the store has no finished experts, or they were trained without TAD.
        TypeError: labels (or clean labels) not int64 [N].
        ValueError: ``snapshots`` < 1, a label outside [0, C), or images and the store of different sizes.
    """
    indices = list(store.finished() if experts is None else experts)
    if not indices:
        raise TrajectoryError(f"{store.root} holds no finished experts; train them first (`tad audit` without "
                              f"--buffer, or `tad buffer`)")
    if snapshots < 1:
        raise ValueError(f"snapshots must be >= 1 (the final parameters alone), got {snapshots}")
    n, k = store.num_train, store.num_classes
    check_labels(labels, k, "labels", n=images.shape[0])
    if n != images.shape[0]:
        raise ValueError(f"the experts in {store.root} were trained on {n} samples but the dataset has "
                         f"{images.shape[0]}; audit the dataset and labels they were trained on")
    dev = torch.device(device)
    x, given = images.to(dev), labels.to(dev)
    clean_vote = torch.zeros(n)
    confidence = torch.zeros(n)
    final_labels, predictions = [], []
    prob_sum = torch.zeros(n, k, device=dev)
    prob_count = 0
    bar = tqdm(total=len(indices), desc="audit", unit="expert", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(indices), group):
        records = [store.load_expert(i) for i in indices[start:start + group]]
        if any(r.trusted is None for r in records):
            raise TrajectoryError(f"the experts in {store.root} were trained without TAD (no trust records); an "
                                  f"audit needs TAD's experts: train them with TAD on, or use --method cleanlab")
        depth = min(snapshots, *(r.params.shape[0] - 1 for r in records))
        params = torch.stack([torch.stack([r.params[-1 - back] for r in records]) for back in range(depth)]).to(dev)
        losses, preds, probs = _snapshot_pass(net, params, x, given, preprocess, batch_size)
        prob_sum += probs
        prob_count += depth * len(records)
        for j, r in enumerate(records):
            assert r.trusted is not None  # checked above
            clean_vote += (r.trusted[-1] & (r.labels[-1] == labels.cpu())).float()
            confidence += hooks.filter_dataset(losses[j], given, k).confidence.float().cpu()
            final_labels.append(r.labels[-1])
        predictions.append(preds.cpu())
        bar.update(len(records))
    bar.close()
    e = len(indices)
    trust_vote, confidence = clean_vote / e, confidence / e
    given_cpu = labels.cpu()
    recalibrated = torch.stack(final_labels).mode(dim=0).values
    preds = torch.cat(predictions)  # [E, N]
    predicted = (prob_sum / prob_count).argmax(1).cpu()
    issue = trust_vote < 0.5
    suggestion = torch.where(recalibrated != given_cpu, recalibrated, predicted)
    suggested = torch.where(issue, suggestion, given_cpu)
    reliability = (preds == suggested).float().mean(0)
    score = 0.5 * (1.0 - trust_vote) + 0.5 * (1.0 - confidence)
    return AuditTable(given_cpu, suggested, issue, trust_vote, confidence, reliability, score,
                      None if clean_labels is None else clean_labels.cpu(), "tad")


def _snapshot_pass(net: ConvNetConfig, params: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                   preprocess: Preprocessor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One no-augmentation pass of E experts at S parameter snapshots (``params`` float [S, E, P], snapshot 0
    the final parameters) over uint8 ``images`` [N, C, H, W] with the given ``labels`` int64 [N].

    Returns:
        ``(losses, predictions, probabilities)`` on ``params``' device: the final parameters' per-sample
        cross-entropy float32 [E, N] and argmax classes int64 [E, N], and the softmax summed over the S * E
        networks float32 [N, K].
    """
    e, n = params.shape[1], images.shape[0]
    losses = torch.empty(e, n, device=params.device)
    predictions = torch.empty(e, n, dtype=torch.int64, device=params.device)
    chunks = []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            x = preprocess(images[i:i + batch_size])
            final = forward(net, params[0], x).float()  # [E, B, K]; one snapshot at a time bounds the memory
            y = labels[i:i + batch_size].expand(e, -1)
            losses[:, i:i + batch_size] = F.cross_entropy(final.reshape(-1, final.shape[-1]), y.reshape(-1),
                                                          reduction="none").view(e, -1)
            predictions[:, i:i + batch_size] = final.argmax(-1)
            probs = final.softmax(-1).sum(0)
            for snapshot in params[1:]:
                probs += forward(net, snapshot, x).float().softmax(-1).sum(0)
            chunks.append(probs)
    return losses, predictions, torch.cat(chunks)


def trust_rounds(store: TrajectoryStore, clean_labels: torch.Tensor | None = None,
                 experts: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The trusted space epoch by epoch, averaged over the experts: one dict per epoch with ``epoch``,
    ``trusted_fraction`` and, with ``clean_labels`` (int64 [N]), ``precision`` (share of trusted samples whose
    label in that epoch is the clean one) and ``recall`` (share of the correctly labelled samples trusted).
    Empty when the experts were trained without TAD."""
    indices = list(store.finished() if experts is None else experts)
    rows: list[dict[str, Any]] = []
    sums: dict[int, list[float]] = {}
    for i in indices:
        r = store.load_expert(i)
        if r.trusted is None:
            return []
        for t in range(r.epochs):
            trusted = r.trusted[t]
            acc = sums.setdefault(t, [0.0, 0.0, 0.0])
            acc[0] += float(trusted.float().mean())
            if clean_labels is not None:
                correct = r.labels_at(t) == clean_labels.cpu()
                acc[1] += float(correct[trusted].float().mean()) if bool(trusted.any()) else 0.0
                acc[2] += float((trusted & correct).sum()) / max(1, int(correct.sum()))
    for t in sorted(sums):
        acc = [v / len(indices) for v in sums[t]]
        row: dict[str, Any] = {"epoch": t, "trusted_fraction": acc[0]}
        if clean_labels is not None:
            row.update(precision=acc[1], recall=acc[2])
        rows.append(row)
    return rows


def confident_learning_table(labels: torch.Tensor, pred_probs: torch.Tensor, num_classes: int,
                             clean_labels: torch.Tensor | None = None) -> AuditTable:
    """The audit by confident learning (``cleanlab.filter.find_label_issues``) on out-of-sample probabilities
    float [N, num_classes]; see :class:`AuditTable` for the columns."""
    from ..confident_learning import confident_split

    labels = labels.cpu()
    split = confident_split(labels, pred_probs, num_classes)
    probs = pred_probs.float().cpu()
    issue = ~split.trusted.cpu()
    suggested = torch.where(issue, probs.argmax(1), labels)
    self_conf = split.confidence.cpu()
    return AuditTable(labels, suggested, issue, (~issue).float(), self_conf,
                      probs.gather(1, suggested[:, None]).squeeze(1), 1.0 - self_conf,
                      None if clean_labels is None else clean_labels.cpu(), "cleanlab")


def kfold_assignment(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """int64 [N]: each sample's fold in [0, folds), stratified by label (each class dealt round-robin in a
    random order drawn with ``seed``)."""
    check_tensors("kfold_assignment", labels=labels)
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    gen = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(labels), dtype=torch.int64)
    offset = 0
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        fold[idx] = (torch.arange(len(idx)) + offset) % folds
        offset += len(idx)
    return fold


def fold_probabilities(net: ConvNetConfig, params: torch.Tensor, images: torch.Tensor, preprocess: Preprocessor,
                       batch_size: int = 2048) -> torch.Tensor:
    """Softmax outputs float32 [M, C] (CPU) of one ConvNet (``params`` float [P]) on uint8 ``images``
    [M, C, H, W]: no augmentation, eval mode, no gradient."""
    dev = params.device
    out = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            x = preprocess(images[i:i + batch_size].to(dev))
            out.append(forward(net, params[None], x)[0].float().softmax(-1).cpu())
    return torch.cat(out)


def detection_metrics(table: AuditTable) -> dict[str, Any]:
    """How well ``table`` finds the wrong labels, against its clean labels.

    Returns:
        ``noise_rate`` (share of wrong given labels, the precision of flagging at random), ``flagged``,
        ``precision`` / ``recall`` / ``f1`` of ``is_label_issue`` as a detector of wrong labels,
        ``suggested_accuracy`` (share of the flagged samples whose suggested label is the clean one),
        ``cleaned_label_accuracy`` (share of all samples whose cleaned label is the clean one) and
        ``per_class``: precision / recall per given class. Empty dict without clean labels; None where a
        ratio has no denominator.
    """
    if table.clean is None:
        return {}
    wrong, flagged = table.given != table.clean, table.is_label_issue

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    tp = int((wrong & flagged).sum())
    precision, recall = ratio(tp, int(flagged.sum())), ratio(tp, int(wrong.sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if tp == 0 else None)
    per_class = []
    for c in range(int(max(table.given.max(), table.clean.max())) + 1):
        mine = table.given == c
        tpc = int((wrong & flagged & mine).sum())
        per_class.append({"class": c, "wrong": int((wrong & mine).sum()), "flagged": int((flagged & mine).sum()),
                          "precision": ratio(tpc, int((flagged & mine).sum())),
                          "recall": ratio(tpc, int((wrong & mine).sum()))})
    return {"samples": len(table.given), "noise_rate": float(wrong.float().mean()), "flagged": int(flagged.sum()),
            "precision": precision, "recall": recall, "f1": f1,
            "suggested_accuracy": ratio(int((table.suggested == table.clean)[flagged].sum()), int(flagged.sum())),
            "cleaned_label_accuracy": float((table.cleaned == table.clean).float().mean()), "per_class": per_class}


# ---------------------------------------------------------------------- the detection table of many runs

#: CIFAR-N label-set keys -> the names the papers use.
LABEL_SET_NAMES = {"worse_label": "CIFAR-10N worst", "aggre_label": "CIFAR-10N aggre",
                   "random_label1": "CIFAR-10N random1", "random_label2": "CIFAR-10N random2",
                   "random_label3": "CIFAR-10N random3", "noisy_label": "CIFAR-100N"}


def label_set_name(config: dict[str, Any]) -> str:
    """The label set a run audited, from its config's ``data`` section: ``sym`` or ``asym`` with the noise rate in
    percent, the CIFAR-N label set's name (:data:`LABEL_SET_NAMES`), or "as given"."""
    d = config["data"]
    if d.get("cifar_n"):
        return LABEL_SET_NAMES.get(d["label_set"], d["label_set"])
    if d.get("noise"):
        kind = "sym" if d["noise"] == "symmetric" else "asym"
        return f"{kind} {round(100 * d['noise_rate'])}%"
    return "as given"


def detection_row(run: str | os.PathLike[str]) -> dict[str, Any] | None:
    """One row of the detection table from a ``tad audit --out`` folder's ``result_audit.json``: its label set,
    detector, budget, :func:`detection_metrics`' scores (fractions) and time (seconds: the training stage --
    TAD's experts or cleanlab's folds -- plus the audit, as the last invocation recorded them); None when the run
    has no detection metrics (no clean labels known).

    Raises:
        FileNotFoundError: ``run`` holds no ``result_audit.json``.
    """
    path = Path(run) / "result_audit.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run} holds no result_audit.json: give `tad audit --out` folders")
    record = json.loads(path.read_text())
    det = record.get("results", {}).get("detection")
    if not det:
        return None
    stages = record.get("stages", {})
    training = stages.get("buffer") or stages.get("folds") or {}
    cfg = record["config"]
    detector = record.get("detector", "tad")
    budget = (f"{cfg['buffer']['num_experts']} experts x {cfg['buffer']['epochs']} ep" if detector == "tad"
              else f"{training.get('folds', '?')} folds x {cfg['buffer']['epochs']} ep")
    return {"run": str(run), "label_set": label_set_name(cfg), "detector": detector, "budget": budget,
            "noise_rate": det["noise_rate"], "flagged": det["flagged"], "precision": det["precision"],
            "recall": det["recall"], "f1": det["f1"], "suggested_accuracy": det["suggested_accuracy"],
            "cleaned_label_accuracy": det["cleaned_label_accuracy"],
            "seconds": round(training.get("wall_time_s", 0.0) + stages.get("audit", {}).get("wall_time_s", 0.0), 1),
            "reused_buffer": training.get("reused"), "device": record.get("device")}


def detection_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The detection table of :func:`detection_row` rows as Markdown, sorted by label set, detector and budget
    (scores in percent; a run that reused its experts says so beside its time)."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    lines = ["| label set | detector | budget | wrong labels % | flagged | precision % | recall % | F1 % | "
             "suggested right % | time s | device |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in sorted(rows, key=lambda r: (r["label_set"], r["detector"], r["budget"])):
        time = f"{r['seconds']:.0f}" + (" (experts reused)" if r["reused_buffer"] else "")
        lines.append(f"| {r['label_set']} | {r['detector']} | {r['budget']} | {pct(r['noise_rate'])} | "
                     f"{r['flagged']} | "
                     f"{pct(r['precision'])} | {pct(r['recall'])} | {pct(r['f1'])} | {pct(r['suggested_accuracy'])} | "
                     f"{time} | {r['device']} |")
    return "\n".join(lines) + "\n"


def write_detection_table(runs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]
                          ) -> tuple[list[dict[str, Any]], list[str]]:
    """Write the detection table of the ``tad audit --out`` folders ``runs`` as ``out.json`` (``{"rows": [...]}``)
    and ``out.md`` (:func:`detection_markdown`), atomically; returns the rows and the runs left out (no clean
    labels known)."""
    rows, skipped = [], []
    for run in runs:
        r = detection_row(run)
        if r is None:
            skipped.append(str(run))
        else:
            rows.append(r)
    text = detection_markdown(rows)
    atomic_write_json({"rows": rows}, Path(out).with_suffix(".json"))
    atomic_write(Path(out).with_suffix(".md"), lambda f: f.write(text.encode()))
    return rows, skipped


# ---------------------------------------------------------------------- files


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def _rows(table: AuditTable, order: torch.Tensor) -> tuple[list[str], list[list[Any]]]:
    header = ["index", "given_label", "suggested_label", "is_label_issue", "score", "trusted", "trust_vote",
              "division_confidence", "reliability"] + (["clean_label"] if table.clean is not None else [])
    cols = [order, table.given[order], table.suggested[order], table.is_label_issue[order].int(),
            table.score[order], table.trusted[order].int(), table.trust_vote[order],
            table.division_confidence[order], table.reliability[order]]
    if table.clean is not None:
        cols.append(table.clean[order])
    values = [c.tolist() for c in cols]
    rows = [[round(v, 6) if isinstance(v, float) else v for v in row] for row in zip(*values)]
    return header, rows


def write_audit(table: AuditTable, out: str | os.PathLike[str], class_names: Sequence[str] | None = None,
                rounds: Sequence[dict[str, Any]] = (), title: str = "Label audit") -> dict[str, str]:
    """Write an audit's files into ``out`` (each atomically); returns ``{what: path}``.

    * ``label_issues.csv``: every sample in index order, the columns of :class:`AuditTable` (``trusted`` and
      ``is_label_issue`` as 0/1; ``clean_label`` when known);
    * ``label_issues_ranked.csv`` / ``.json``: the issues only, highest score first;
    * ``labels_cleaned.npz``: label sets ``cleaned_label`` (suggested labels for the issues, given ones
      elsewhere), ``given_label``, ``is_label_issue`` and ``clean_label`` when known -- read by ``tad run`` /
      ``tad wrap`` as ``--cifar-n FILE --label-set cleaned_label``;
    * ``audit_report.md`` (+ ``audit_report.png`` with matplotlib): detection metrics and per-class
      precision / recall when the clean labels are known, the given-vs-suggested confusion of the issues,
      the trusted space per epoch (``rounds``, see :func:`trust_rounds`).
    """
    out = Path(out)
    k = _num_classes(table)
    if class_names is not None and len(class_names) < k:
        raise ValueError(f"{len(class_names)} class names for labels up to {k - 1}: give one name per class")
    out.mkdir(parents=True, exist_ok=True)
    n = len(table.given)
    paths = {"table": out / TABLE_FILE, "ranked_csv": out / f"{RANKED_FILE}.csv",
             "ranked_json": out / f"{RANKED_FILE}.json", "labels": out / LABEL_FILE,
             "report": out / f"{REPORT_FILE}.md"}
    header, rows = _rows(table, torch.arange(n))
    atomic_write(paths["table"], lambda f: f.write(_csv_text(header, rows)))
    header, ranked = _rows(table, table.ranked())
    atomic_write(paths["ranked_csv"], lambda f: f.write(_csv_text(header, ranked)))
    atomic_write_json({"method": table.method, "samples": n, "issues": [dict(zip(header, r)) for r in ranked]},
                      paths["ranked_json"])
    arrays: dict[str, Any] = {CLEANED_KEY: table.cleaned.numpy(), GIVEN_KEY: table.given.numpy(),
              "is_label_issue": table.is_label_issue.numpy()}
    if table.clean is not None:
        arrays[CLEAN_KEY] = table.clean.numpy()
    atomic_write(paths["labels"], lambda f: np.savez(f, **arrays))
    metrics = detection_metrics(table)
    names = list(class_names) if class_names is not None else [str(c) for c in range(_num_classes(table))]
    text = report_markdown(table, metrics, names, rounds, title)
    atomic_write(paths["report"], lambda f: f.write(text.encode()))
    try:
        plot_report(table, metrics, names, rounds, out / f"{REPORT_FILE}.png", title)
        paths["plot"] = out / f"{REPORT_FILE}.png"
    except ImportError:
        pass  # matplotlib is optional; the markdown report holds the same numbers
    return {k: str(v) for k, v in paths.items()}


def write_pruned(dataset: ImageDataset, table: AuditTable, path: str | os.PathLike[str]) -> Path:
    """An arrays file (:func:`~tad_plugin.data.save_arrays`) of ``dataset`` without the flagged samples: the
    kept training images with the dataset's own labels (clean where the dataset's are), the whole test set,
    plus the label sets ``given_label`` (the kept samples' audited labels) and ``kept_index`` (their indices
    in the audited set). ``tad run --dataset PATH --cifar-n PATH --label-set given_label`` trains on it."""
    if len(table.given) != len(dataset.train_labels):
        raise ValueError(f"the audit has {len(table.given)} samples but the dataset {len(dataset.train_labels)}")
    keep = torch.nonzero(table.trusted).flatten()
    pruned = dataclasses.replace(dataset, train_images=dataset.train_images[keep],
                                 train_labels=dataset.train_labels[keep])
    path = Path(path)
    save_arrays(pruned, path, extra={GIVEN_KEY: table.given[keep].numpy(), "kept_index": keep.numpy()})
    return path


def _num_classes(table: AuditTable) -> int:
    top = max(int(table.given.max()), int(table.suggested.max()))
    return 1 + max(top, int(table.clean.max()) if table.clean is not None else 0)


def _confusion(table: AuditTable, k: int) -> torch.Tensor:
    """int64 [k, k]: issues counted by (given, suggested)."""
    m = table.is_label_issue
    flat = table.given[m] * k + table.suggested[m]
    return torch.bincount(flat, minlength=k * k).view(k, k)


def report_markdown(table: AuditTable, metrics: dict[str, Any], names: Sequence[str],
                    rounds: Sequence[dict[str, Any]], title: str) -> str:
    """The audit report as Markdown (see :func:`write_audit`)."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    n, flagged = len(table.given), int(table.is_label_issue.sum())
    lines = [f"# {title}", "", f"Method: {table.method}. {n} samples, {flagged} flagged as label issues "
             f"({100 * flagged / max(1, n):.1f}%); {int((table.cleaned != table.given).sum())} relabelled in "
             f"`{LABEL_FILE}` (`{CLEANED_KEY}`).", ""]
    if metrics:
        lines += ["## Detection against the clean labels", "",
                  "| wrong labels % | flagged | precision % | recall % | F1 % | suggested labels right % | "
                  "cleaned labels right % |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
                  f"| {pct(metrics['noise_rate'])} | {metrics['flagged']} | {pct(metrics['precision'])} | "
                  f"{pct(metrics['recall'])} | {pct(metrics['f1'])} | {pct(metrics['suggested_accuracy'])} | "
                  f"{pct(metrics['cleaned_label_accuracy'])} |", "",
                  "Per given class:", "", "| class | wrong | flagged | precision % | recall % |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {names[r['class']] if r['class'] < len(names) else r['class']} | {r['wrong']} | {r['flagged']} "
                  f"| {pct(r['precision'])} | {pct(r['recall'])} |" for r in metrics["per_class"]]
        lines.append("")
    k = len(names)
    conf = _confusion(table, k)
    lines += ["## Flagged samples: given label (rows) vs suggested label (columns)", "",
              "| given \\ suggested | " + " | ".join(names) + " |", "| --- |" + " ---: |" * k]
    lines += [f"| {names[i]} | " + " | ".join(str(int(v)) for v in conf[i]) + " |" for i in range(k)]
    if rounds:
        lines += ["", "## Trusted space per epoch (mean over experts)", "",
                  "| epoch | trusted % | precision % | recall % |", "| ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['epoch']} | {pct(r['trusted_fraction'])} | {pct(r.get('precision'))} | "
                  f"{pct(r.get('recall'))} |" for r in rounds]
    return "\n".join(lines) + "\n"


def plot_report(table: AuditTable, metrics: dict[str, Any], names: Sequence[str], rounds: Sequence[dict[str, Any]],
                path: str | os.PathLike[str], title: str) -> None:
    """The report's figure: per-class precision / recall of the flags (clean labels known), the confusion of
    the flagged samples' given vs suggested labels, the trusted space per epoch. Needs matplotlib."""
    from ..plotting import pyplot, save_png

    plt = pyplot("the audit report's figure")
    panels = [p for p, show in (("class", bool(metrics)), ("confusion", True), ("rounds", bool(rounds))) if show]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    k = len(names)
    for ax, panel in zip(axes[0], panels):
        if panel == "class":
            x = np.arange(len(metrics["per_class"]))
            for shift, key in ((-0.2, "precision"), (0.2, "recall")):
                ax.bar(x + shift, [r[key] or 0.0 for r in metrics["per_class"]], width=0.4, label=key)
            ax.set_xticks(x, [names[r["class"]] if r["class"] < k else str(r["class"]) for r in metrics["per_class"]],
                          rotation=45, fontsize=7)
            ax.set_ylim(0, 1.02)
            ax.set_title("flagged samples per given class")
            ax.legend(fontsize=8)
        elif panel == "confusion":
            im = ax.imshow(_confusion(table, k).numpy(), cmap="Blues")
            ax.set_xticks(range(k), names, rotation=45, fontsize=7)
            ax.set_yticks(range(k), names, fontsize=7)
            ax.set_xlabel("suggested label")
            ax.set_ylabel("given label")
            ax.set_title("flagged: given vs suggested")
            fig.colorbar(im, ax=ax, fraction=0.046)
        else:
            ep = [r["epoch"] for r in rounds]
            ax.plot(ep, [r["trusted_fraction"] for r in rounds], "o-", color="black", label="trusted share")
            for key, style in (("precision", "s-"), ("recall", "^-")):
                if all(key in r for r in rounds):
                    ax.plot(ep, [r[key] for r in rounds], style, label=key)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("expert epoch")
            ax.set_title("trusted space (mean over experts)")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    save_png(fig, path)
