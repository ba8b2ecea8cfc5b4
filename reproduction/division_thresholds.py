"""How a TAD run's final division changes with the threshold rule: the paper's class mean (Eq. 5) vs a
global 0.5 vs min(class mean, 0.5), with precision, recall and each class's recall of its clean samples.

    python reproduction/division_thresholds.py --run runs/sym40-tad --dataset cifar10 --out division_sym40.json

For the first ``--experts`` experts of a finished TAD run (``tad run`` / ``tad buffer --tad`` with
``--out RUN``: it reads ``RUN/buffer`` and ``RUN/labels.pt``; ``--dataset`` is the run's dataset): the per-sample
losses of each expert's final parameters on
the training set under the labels it last trained on (no augmentation), the division's GMM confidence
``w`` (``tad_plugin.division.divide_by_loss``, the library's own), and trusted = ``w >= tau`` under
each rule. Precision and recall are against the clean labels the run saved. Use it to see whether a
different threshold would reach a precision target before changing anything: on CIFAR-10 sym40 the
three rules differ by < 0.5 point (``results/cifar10/division/``).

``--average 1,3,6``: also divide by each sample's loss averaged over the parameters of the expert's last
K epochs (its trajectory snapshots; the labels stay the ones it last trained on), with the class-mean rule:
whether losses remembered from before the experts fit their noisy trusted samples would split more precisely
than the last epoch's alone (the sym40 runs' divisions drift from 94.9% to 93.7% precise as training goes on).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tad_plugin.data import load_dataset
from tad_plugin.division import divide_by_loss
from tad_plugin.engine.convnet import ConvNetConfig
from tad_plugin.engine.experts import snapshot_mean_losses
from tad_plugin.engine.preprocess import Preprocessor
from tad_plugin.engine.trajectories import TrajectoryStore
from tad_plugin.files import atomic_write_json

#: rule name -> per-sample threshold from (confidence w [N], class means tau_c [C], labels [N]).
RULES = {
    "class mean (Eq. 5)": lambda w, tau, y: tau[y],
    "global 0.5": lambda w, tau, y: torch.full_like(w, 0.5),
    "min(class mean, 0.5)": lambda w, tau, y: tau.clamp(max=0.5)[y],
}


def division_stats(trusted: torch.Tensor, labels: torch.Tensor, clean: torch.Tensor, num_classes: int) -> dict:
    """Size, precision and recall of a trusted mask (bool [N]) against the clean labels, and each class's
    recall of its correctly labelled samples (None for a class with none)."""
    right = labels == clean
    per_class = []
    for c in range(num_classes):
        pool = right & (labels == c)
        per_class.append(round(float(trusted[pool].float().mean()), 4) if pool.any() else None)
    return {"trusted": int(trusted.sum()),
            "precision": round(float(right[trusted].float().mean()), 4) if trusted.any() else None,
            "recall": round(float(trusted[right].float().mean()), 4) if right.any() else None,
            "clean_recall_per_class": per_class}


def averaged_rule(k: int) -> str:
    """The result key of the class-mean division on losses averaged over the last ``k`` epochs."""
    return f"class mean (Eq. 5), loss averaged over the last {k} epochs"


def compare(run: Path, experts: int, dataset: str, device: torch.device, batch_size: int = 2048,
            average: tuple[int, ...] = ()) -> dict:
    """``{expert index: {rule: division_stats, "class_mean_tau": [C]}}`` for the first ``experts`` finished
    experts of ``run``; with ``average`` (epoch counts K >= 2) also ``{averaged_rule(K): division_stats}``."""
    if any(k < 2 for k in average):
        raise ValueError(f"--average takes epoch counts >= 2 (1 is the last epoch, always shown), got {list(average)}")
    store = TrajectoryStore.open(run / "buffer")
    labels_file = run / "labels.pt"
    if not labels_file.is_file():
        raise FileNotFoundError(f"{labels_file} is missing: --run must be the --out folder of a `tad run` or "
                                f"`tad buffer` run (it saves the labels there)")
    saved = torch.load(labels_file, weights_only=True)
    clean = saved["clean"]
    ds = load_dataset(dataset)
    if len(ds.train_labels) != store.num_train:
        raise ValueError(f"the dataset has {len(ds.train_labels)} training images but the buffer was trained on "
                         f"{store.num_train}: pass the run's dataset with --dataset")
    model = store.meta.get("model", {})
    net = ConvNetConfig.for_dataset(ds, width=model.get("width") or 128, depth=model.get("depth"))
    state = store.preprocess_state()
    if state is None:
        raise ValueError(f"{run / 'buffer'} has no preprocess.pt (the transform its experts trained with): "
                         f"it was not written by `tad buffer` / `tad run`")
    pre = Preprocessor.from_state_dict(state).to(device)
    images = ds.train_images.to(device)
    finished = store.finished()
    if not finished:
        raise ValueError(f"{run / 'buffer'} has no finished expert yet")
    out: dict = {}
    for e in finished[:experts]:
        rec = store.load_expert(e)
        if rec.trusted is None:
            raise ValueError(f"expert {e} of {run / 'buffer'} has no trusted spaces: it was trained without TAD")
        y = rec.labels_at(rec.epochs - 1).to(device)
        deepest = max(average, default=1)
        if deepest > rec.params.shape[0]:
            raise ValueError(f"--average {deepest}: expert {e} has only {rec.params.shape[0]} parameter snapshots "
                             f"(its {rec.epochs} epochs and the start)")
        snapshots = [p.unsqueeze(0) for p in rec.params[-deepest:].to(device)]  # each [1, P]: the engine's shape

        def losses(k: int) -> torch.Tensor:  # what a division with tad.loss_average = k reads
            return snapshot_mean_losses(net, snapshots[-k:], images, y, pre, batch_size)[0][0]

        split = divide_by_loss(losses(1), y, ds.num_classes)
        w, tau = split.confidence, split.thresholds.nan_to_num(1.0)
        res = {name: division_stats((w >= rule(w, tau, y)).cpu(), y.cpu(), clean, ds.num_classes)
               for name, rule in RULES.items()}
        res["class_mean_tau"] = [round(float(v), 4) for v in tau]
        for k in average:
            avg = divide_by_loss(losses(k), y, ds.num_classes)
            res[averaged_rule(k)] = division_stats(avg.trusted.cpu(), y.cpu(), clean, ds.num_classes)
        out[str(e)] = res
    return out


def table(result: dict) -> str:
    lines = ["| expert | rule | trusted | precision | recall | lowest class recalls |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for e, res in result.items():
        for name in (k for k in res if k != "class_mean_tau"):
            s = res[name]
            low = sorted((r, c) for c, r in enumerate(s["clean_recall_per_class"]) if r is not None)[:3]
            lows = ", ".join(f"class {c} {100 * r:.1f}%" for r, c in low)
            lines.append(f"| {e} | {name} | {s['trusted']} | {100 * s['precision']:.1f}% | "
                         f"{100 * s['recall']:.1f}% | {lows} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="the --out folder of a finished TAD run")
    p.add_argument("--experts", type=int, default=4, help="how many experts to analyse (the first ones)")
    p.add_argument("--dataset", required=True,
                   help="the run's dataset: a name (digits, cifar10, ...) or an arrays file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--average", type=lambda v: tuple(int(x) for x in v.split(",")), default=(), metavar="3,6",
                   help="also divide by losses averaged over the last K epochs (K >= 2), for each K")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    a = p.parse_args(argv)
    result = compare(a.run, a.experts, a.dataset, torch.device(a.device), average=a.average)
    print(table(result))
    if a.out is not None:
        atomic_write_json(result, a.out)


if __name__ == "__main__":
    main()
