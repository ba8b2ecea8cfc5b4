"""The trust report: how the trusted space evolves over the dual loop's rounds, and how right it is.

One :class:`TrustRound` per division or recalibration. When the clean labels are known (synthetic noise,
CIFAR-N), each round also records:

* ``precision``: share of trusted samples whose current label is the clean one;
* ``recall``: share of the correctly labelled samples (current label == clean label) that are trusted,
  i.e. how much of the usable data the trusted space holds;
* ``label_accuracy``: share of all samples whose current label is the clean one (recalibration raises it);
* ``recalled_accuracy``: share of the samples recalled this round whose pseudo-label is right;
* ``recalled_agree_accuracy`` / ``recalled_disagree_accuracy``: the same, split by whether the expert's own
  prediction agrees with the pseudo-label (when the round was given the expert's agreement). Whether
  requiring that agreement would make recalls more accurate, read off a run instead of guessed.

Every round also counts its movements against the round before (of either stage): ``admitted`` and
``expelled`` samples; and a recalibration counts ``rerecalled``: recalled samples that an earlier
recalibration had recalled too, so the outer loop expelled them in between. Many re-recalls late in a run
mean the two loops disagree about the same samples each epoch (the vote re-admits what the losses reject).
Given the expert's agreement, a recalibration also counts ``recalled_expert_agrees``: recalled samples whose
pseudo-label the expert itself predicts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

import torch

from .checks import check_labels
from .files import atomic_write_json
from .hookspecs import hookimpl
from .plotting import pyplot, save_png

__all__ = ["TrustReport", "TrustReportListener", "TrustRound", "later_recalls_text", "least_precise", "least_recalled",
           "per_class_trust"]


@dataclass(frozen=True)
class TrustRound:
    """The state of the trusted space after one step of the dual loop (see the module docstring)."""

    round: int
    epoch: int
    stage: str  # "division" (outer loop) or "recalibration" (inner loop)
    trusted: int
    untrusted: int
    recalled: int = 0
    sieved: int = 0
    precision: float | None = None
    recall: float | None = None
    label_accuracy: float | None = None
    recalled_accuracy: float | None = None
    admitted: int = 0
    expelled: int = 0
    rerecalled: int = 0
    recalled_expert_agrees: int | None = None
    recalled_agree_accuracy: float | None = None
    recalled_disagree_accuracy: float | None = None


class _RoundMetrics(TypedDict, total=False):
    """The optional :class:`TrustRound` fields that :meth:`TrustReport.add` fills (those its inputs allow)."""

    precision: float | None
    recall: float | None
    label_accuracy: float | None
    recalled_accuracy: float | None
    recalled_expert_agrees: int | None
    recalled_agree_accuracy: float | None
    recalled_disagree_accuracy: float | None


@dataclass
class TrustReport:
    """Rounds of one run, plus the noisy labels' own accuracy for reference."""

    rounds: list[TrustRound] = field(default_factory=list)
    noisy_label_accuracy: float | None = None
    _last_trusted: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _ever_recalled: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def add(self, *, epoch: int, stage: str, trusted: torch.Tensor, labels: torch.Tensor,
            noisy_labels: torch.Tensor, clean_labels: torch.Tensor | None = None,
            previous_trusted: torch.Tensor | None = None,
            expert_agrees: torch.Tensor | None = None) -> TrustRound:
        """Record one round.

        Args:
            epoch: expert epoch after which the round happened.
            stage: ``"division"`` or ``"recalibration"``.
            trusted: bool [N], the trusted space after the round.
            labels: int64 [N], the current labels after the round.
            noisy_labels: int64 [N], the labels the run started from.
            clean_labels: int64 [N] or None (then only sizes are recorded).
            previous_trusted: bool [N] before the round, to count recalled / sieved samples (a
                recalibration passes it; ``admitted`` / ``expelled`` compare with the last round added).
            expert_agrees: bool [N] or None: whether the expert's prediction equals ``labels`` (a recalibration
                passes it to split its recalls by agreement; None leaves those fields None).
        """
        trusted, labels, noisy = trusted.cpu(), labels.cpu(), noisy_labels.cpu()
        recalled = sieved = rerecalled = 0
        newly = torch.zeros_like(trusted)
        if previous_trusted is not None:
            prev = previous_trusted.cpu()
            newly = trusted & ~prev
            recalled, sieved = int(newly.sum()), int((prev & ~trusted).sum())
            ever = self._ever_recalled if self._ever_recalled is not None else torch.zeros_like(trusted)
            rerecalled = int((newly & ever).sum())
            self._ever_recalled = ever | newly
        last = self._last_trusted
        admitted = 0 if last is None else int((trusted & ~last).sum())
        expelled = 0 if last is None else int((last & ~trusted).sum())
        self._last_trusted = trusted.clone()
        metrics: _RoundMetrics = {}
        agrees = None if expert_agrees is None else expert_agrees.cpu()
        if agrees is not None:
            if agrees.shape != trusted.shape or agrees.dtype != torch.bool:
                raise ValueError(f"expert_agrees must be bool {tuple(trusted.shape)}, got {agrees.dtype} "
                                 f"{tuple(agrees.shape)}")
            metrics["recalled_expert_agrees"] = int((newly & agrees).sum())
        if clean_labels is not None:
            clean = clean_labels.cpu()
            correct = labels == clean
            if self.noisy_label_accuracy is None:
                self.noisy_label_accuracy = _mean(noisy == clean)
            metrics.update({
                "precision": _mean(correct[trusted]),
                "recall": float((trusted & correct).sum()) / max(1, int(correct.sum())),
                "label_accuracy": _mean(correct),
                "recalled_accuracy": _mean(correct[newly]),
            })
            if agrees is not None:
                metrics["recalled_agree_accuracy"] = _mean(correct[newly & agrees])
                metrics["recalled_disagree_accuracy"] = _mean(correct[newly & ~agrees])
        row = TrustRound(round=len(self.rounds), epoch=epoch, stage=stage, trusted=int(trusted.sum()),
                         untrusted=int((~trusted).sum()), recalled=recalled, sieved=sieved, admitted=admitted,
                         expelled=expelled, rerecalled=rerecalled, **metrics)
        self.rounds.append(row)
        return row

    def later_recalls(self) -> dict[str, float | int | None] | None:
        """The recalibrations after the first, summed: ``recalled`` samples and their ``accuracy``, and, where
        the rounds recorded the expert's agreement, ``agree`` / ``disagree`` counts with their accuracies (None
        where a group is empty). None without clean-label metrics or with fewer than two recalibrations. The
        first round recalls the easy samples; the later ones show what the loop keeps re-admitting."""
        later = [r for r in self.rounds if r.stage == "recalibration"][1:]
        if not later or any(r.precision is None for r in later):  # no clean labels: nothing to score
            return None
        recalled = sum(r.recalled for r in later)
        right = round(sum(r.recalled * (r.recalled_accuracy or 0.0) for r in later))  # counts, from the rates
        out: dict[str, float | int | None] = {"rounds": len(later), "recalled": recalled,
                                              "accuracy": right / recalled if recalled else None}
        agrees = [r.recalled_expert_agrees for r in later if r.recalled_expert_agrees is not None]
        if len(agrees) == len(later):
            agree = sum(agrees)
            right_agree = round(sum(n * (r.recalled_agree_accuracy or 0.0) for n, r in zip(agrees, later)))
            out.update(agree=agree, agree_accuracy=right_agree / agree if agree else None,
                       disagree=recalled - agree,
                       disagree_accuracy=(right - right_agree) / (recalled - agree) if recalled > agree else None)
        return out

    def to_dict(self) -> dict[str, object]:
        return {"noisy_label_accuracy": self.noisy_label_accuracy, "rounds": [asdict(r) for r in self.rounds]}

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write the report as JSON (atomically)."""
        atomic_write_json(self.to_dict(), path)

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> TrustReport:
        """Read a report written by :meth:`save_json`. Raises ValueError naming the file when it is not one."""
        try:
            data = json.loads(Path(path).read_text())
            return cls([TrustRound(**r) for r in data["rounds"]], data.get("noisy_label_accuracy"))  # older: 0s
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read trust report {path}: {type(exc).__name__}: {exc}; it is not a report "
                             f"TrustReport.save_json wrote. Delete it to go on without it (expert 0 writes it while "
                             f"it trains: delete that expert's file too to have it again)") from exc

    def table(self, max_rows: int | None = None) -> str:
        """A Markdown table of the rounds (percentages where clean labels were known); with ``max_rows``,
        the first and last rounds around a ``...`` row."""
        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.1f}"

        def row(r: TrustRound) -> str:
            return (f"| {r.round} | {r.epoch} | {r.stage} | {r.trusted} | {r.untrusted} | {r.recalled} | "
                    f"{r.sieved} | {pct(r.precision)} | {pct(r.recall)} | {pct(r.label_accuracy)} |")

        rows = [row(r) for r in self.rounds]
        if max_rows is not None and len(rows) > max_rows:
            head = max_rows // 2 + max_rows % 2
            rows = [*rows[:head], "| ... |" + " |" * 9, *rows[len(rows) - (max_rows - head):]]
        return "\n".join(["| round | epoch | stage | trusted | untrusted | recalled | sieved | precision % | "
                          "recall % | label acc % |",
                          "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", *rows])

    def plot(self, path: str | os.PathLike[str], title: str = "Trust report") -> None:
        """Draw trusted-space size and (if known) precision / recall / label accuracy per round as a PNG.

        Needs matplotlib: ``pip install 'tad_plugin[plot]'``.
        """
        if not self.rounds:
            raise ValueError("the trust report has no rounds to plot")
        plt = pyplot("the trust-report plot")
        x = [r.epoch + (0.5 if r.stage == "recalibration" else 0.0) for r in self.rounds]
        fig, ax = plt.subplots(figsize=(7, 4))
        n = self.rounds[0].trusted + self.rounds[0].untrusted
        ax.plot(x, [r.trusted / n for r in self.rounds], "o-", label="trusted share", color="black")
        for key, style in (("precision", "s-"), ("recall", "^-"), ("label_accuracy", "d--")):
            values = [getattr(r, key) for r in self.rounds]
            if all(v is not None for v in values):
                ax.plot(x, values, style, label=key.replace("_", " "))
        if self.noisy_label_accuracy is not None:
            ax.axhline(self.noisy_label_accuracy, color="grey", lw=0.8, ls=":", label="noisy label accuracy")
        ax.set_xlabel("expert epoch (divisions at whole epochs, recalibrations at +0.5)")
        ax.set_ylim(0, 1.02)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        save_png(fig, path)


#: One class's row of :func:`per_class_trust` (its Returns section says what each key holds).
ClassTrust = TypedDict("ClassTrust", {"class": int, "trusted": int, "precision": float | None,
                                      "clean_recall": float | None, "intruders": list[list[int]]})


def per_class_trust(trusted: torch.Tensor, labels: torch.Tensor, clean_labels: torch.Tensor,
                    num_classes: int) -> list[ClassTrust]:
    """The trusted space class by class: where its remaining noise sits (structured noise such as CIFAR-10's
    asymmetric flips concentrates it in a few classes, which an overall precision hides).

    Args:
        trusted: bool [N], the trusted space.
        labels: int64 [N], the labels the trusted samples carry (after recalibration), in [0, num_classes).
        clean_labels: int64 [N], the true labels.
        num_classes: C.

    Returns:
        One dict per class c (by ``labels``): ``class``; ``trusted``, the trusted samples labelled c;
        ``precision``, the share of them truly of class c (None when there are none); ``clean_recall``, the
        share of the samples truly of class c and labelled c that are trusted (None when there are none);
        ``intruders``, up to three ``[true class, count]`` pairs, the largest groups of trusted samples
        labelled c that belong to another class.
    """
    trusted, labels, clean = trusted.cpu().bool(), labels.cpu().long(), clean_labels.cpu().long()
    if not trusted.shape == labels.shape == clean.shape or trusted.dim() != 1:
        raise ValueError(f"trusted, labels and clean_labels must be 1-D of one length, got {tuple(trusted.shape)}, "
                         f"{tuple(labels.shape)} and {tuple(clean.shape)}")
    check_labels(labels, num_classes)
    check_labels(clean, num_classes, "clean_labels")
    # confusion[c, k]: trusted samples labelled c whose true class is k
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long)
    confusion.index_add_(0, labels[trusted] * num_classes + clean[trusted],
                         torch.ones(int(trusted.sum()), dtype=torch.long))
    confusion = confusion.view(num_classes, num_classes)
    correct = labels == clean
    rows: list[ClassTrust] = []
    for c in range(num_classes):
        n, right = int(confusion[c].sum()), int(confusion[c, c])
        usable = correct & (labels == c)
        wrong = confusion[c].clone()
        wrong[c] = 0
        counts, classes = wrong.sort(descending=True)
        rows.append({"class": c, "trusted": n, "precision": right / n if n else None,
                     "clean_recall": float(trusted[usable].float().mean()) if bool(usable.any()) else None,
                     "intruders": [[int(k), int(m)] for k, m in zip(classes[:3], counts[:3]) if m > 0]})
    return rows


def least_precise(per_class: list[ClassTrust], count: int = 3) -> list[ClassTrust]:
    """The ``count`` rows of :func:`per_class_trust` with the lowest precision (classes without trusted
    samples left out), lowest first."""
    return _lowest(per_class, "precision", count)


def least_recalled(per_class: list[ClassTrust], count: int = 3) -> list[ClassTrust]:
    """The ``count`` rows of :func:`per_class_trust` with the lowest recall of their clean samples (classes
    without clean samples left out), lowest first: where the division drops correctly labelled samples
    (a class that asymmetric noise flips away from is clean yet loses its harder half to the class-mean
    threshold, Eq. 5)."""
    return _lowest(per_class, "clean_recall", count)


def _lowest(per_class: list[ClassTrust], key: Literal["precision", "clean_recall"],
            count: int) -> list[ClassTrust]:
    scored = [(value, r) for r in per_class if (value := r[key]) is not None]
    return [r for _, r in sorted(scored, key=lambda vr: float(vr[0]))][:count]


def later_recalls_text(later: dict | None) -> str | None:
    """:meth:`TrustReport.later_recalls` in one line (None when there is nothing to say)."""
    if not later or not later["recalled"]:
        return None

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    rounds = f"{later['rounds']} round{'' if later['rounds'] == 1 else 's'}"
    text = (f"recalls after the first round (first expert, {rounds}): {later['recalled']}, "
            f"{pct(later['accuracy'])} right")
    if "agree" in later:
        text += (f"; where the expert predicts the pseudo-label {later['agree']} ({pct(later['agree_accuracy'])} "
                 f"right), where it does not {later['disagree']} ({pct(later['disagree_accuracy'])} right)")
    return text


def _mean(mask: torch.Tensor) -> float | None:
    return float(mask.float().mean()) if mask.numel() else None


class TrustReportListener:
    """The trust report as a listener plugin: records the divisions and recalibrations of one expert.

    Register it on the hooks' plugin manager (``hooks.pm.register(listener)``) for a run; it implements the
    ``on_division`` / ``on_recalibration`` notifications.

    Args:
        noisy_labels: int64 [N], the labels the run started from.
        clean_labels: int64 [N] or None; with them the rounds have precision / recall.
        expert: the expert followed; None = the first expert notified.
        path: where the report's JSON is rewritten (atomically) after every round, so that a run stopped
            midway keeps it; None = in memory only (:attr:`report`).

    Raises:
        TypeError / ValueError: labels that are not int64 [N] tensors of non-negative classes, or clean labels of
            another length than the noisy ones.
    """

    def __init__(self, noisy_labels: torch.Tensor, clean_labels: torch.Tensor | None = None,
                 expert: int | None = None, path: str | os.PathLike[str] | None = None) -> None:
        for name, labels in (("noisy_labels", noisy_labels), ("clean_labels", clean_labels)):
            if labels is None and name == "clean_labels":
                continue
            if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
                got = (f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor)
                       else type(labels).__name__)
                raise TypeError(f"TrustReportListener's {name} must be an int64 torch.Tensor [N], got {got}")
            if labels.numel() and int(labels.min()) < 0:
                raise ValueError(f"TrustReportListener's {name} hold the negative class {int(labels.min())}")
        if clean_labels is not None and clean_labels.shape != noisy_labels.shape:
            raise ValueError(f"TrustReportListener's clean_labels {tuple(clean_labels.shape)} and noisy_labels "
                             f"{tuple(noisy_labels.shape)} differ in length: give one label per training sample")
        self.noisy_labels, self.clean_labels = noisy_labels, clean_labels
        self.expert, self.path = expert, path
        self.report = TrustReport()

    def _follows(self, expert: int, labels: torch.Tensor) -> bool:
        if self.expert is None:
            self.expert = expert
        if expert == self.expert and labels.shape != self.noisy_labels.shape:
            raise ValueError(f"TrustReportListener was built for {self.noisy_labels.shape[0]} samples, but expert "
                             f"{expert}'s labels hold {labels.shape[0]}: give it the run's labels")
        return expert == self.expert

    @hookimpl
    def on_division(self, expert: int, epoch: int, labels: torch.Tensor, trusted: torch.Tensor) -> None:
        if self._follows(expert, labels):
            self.report.add(epoch=epoch, stage="division", trusted=trusted, labels=labels,
                            noisy_labels=self.noisy_labels, clean_labels=self.clean_labels)
            self._save()

    @hookimpl
    def on_recalibration(self, expert: int, epoch: int, labels: torch.Tensor, trusted: torch.Tensor,
                         previous_trusted: torch.Tensor, predictions: torch.Tensor | None) -> None:
        if self._follows(expert, labels):
            # the division's own pass predicted every sample: agreement with the new labels costs no extra pass
            agrees = None if predictions is None else predictions == labels.to(predictions.device)
            self.report.add(epoch=epoch, stage="recalibration", trusted=trusted, labels=labels,
                            noisy_labels=self.noisy_labels, clean_labels=self.clean_labels,
                            previous_trusted=previous_trusted, expert_agrees=agrees)
            self._save()

    def _save(self) -> None:
        if self.path is not None:
            self.report.save_json(self.path)
