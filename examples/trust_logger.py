"""A listener plugin: log every division and recalibration of a run to TensorBoard, or to a CSV file.

TAD's notification hooks (``on_division``, ``on_recalibration``; see ``tad_plugin/hookspecs.py``) are called
for every expert after each round of the trust loop, by the engine (``tad run``), ``tad wrap`` and your own
loop alike. A listener implements the ones it wants; this one writes, per expert and round, the trusted-space
size and -- when the clean labels are known -- its precision. With ``torch.utils.tensorboard`` importable
(the ``tensorboard`` package installed) it writes TensorBoard scalars, else one CSV row per round.

Register it for a run of your own loop::

    hooks = TADHooks()
    hooks.pm.register(TrustLogger("runs/log", clean_labels=clean))

or ship it in a package under the ``tad_plugin`` entry-point group, as any plugin. Run this file to see it
log the trust loop on digits (``python examples/trust_logger.py --out runs/trust_log``).
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import torch

from tad_plugin import hookimpl


class TrustLogger:
    """Logs each round to ``<out>/`` (TensorBoard event files, or ``trust_log.csv``).

    Args:
        out: the log folder (created).
        clean_labels: int64 [N], or None (then only sizes are logged).
        tensorboard: use TensorBoard when it is importable (None), always (True) or never (False).
    """

    FIELDS = ("stage", "expert", "epoch", "trusted", "precision")

    def __init__(self, out: str | os.PathLike[str], clean_labels: torch.Tensor | None = None,
                 tensorboard: bool | None = None) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.clean = clean_labels
        self.writer = None
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard:
                    raise
            else:
                self.writer = SummaryWriter(str(self.out))
        self.path = self.out / "trust_log.csv"
        if self.writer is None:
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)

    def _log(self, stage: str, expert: int, epoch: int, labels: torch.Tensor, trusted: torch.Tensor) -> None:
        size = int(trusted.sum())
        precision = None
        if self.clean is not None and size:
            precision = float((labels.cpu() == self.clean)[trusted.cpu()].float().mean())
        if self.writer is not None:
            self.writer.add_scalar(f"expert{expert}/{stage}/trusted", size, epoch)
            if precision is not None:
                self.writer.add_scalar(f"expert{expert}/{stage}/precision", precision, epoch)
            self.writer.flush()
            return
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([stage, expert, epoch, size, "" if precision is None else f"{precision:.4f}"])

    @hookimpl
    def on_division(self, expert: int, epoch: int, labels: torch.Tensor, trusted: torch.Tensor) -> None:
        self._log("division", expert, epoch, labels, trusted)

    @hookimpl
    def on_recalibration(self, expert: int, epoch: int, labels: torch.Tensor, trusted: torch.Tensor) -> None:
        self._log("recalibration", expert, epoch, labels, trusted)


def main(argv: list[str] | None = None) -> int:
    """A small linear model's trust loop on digits with 40% symmetric noise, logged by :class:`TrustLogger`."""
    from tad_plugin import Schedule, TADHooks, TrustLoop
    from tad_plugin.data import load_dataset
    from tad_plugin.noise import make_noisy_labels
    from tad_plugin.trust_loop import class_chunk_anchors

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the log folder")
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    ds = load_dataset("digits")
    x, clean = ds.train_images.flatten(1).float() / 255, ds.train_labels
    noisy = make_noisy_labels(clean, "symmetric", 0.4, num_classes=10, seed=0)
    hooks = TADHooks()
    hooks.pm.register(TrustLogger(args.out, clean_labels=clean))
    model = torch.nn.Linear(x.shape[1], 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loop = TrustLoop(hooks, Schedule(warmup_epochs=2, anchor_epoch=4), noisy, num_classes=10)
    gen = torch.Generator().manual_seed(0)

    def losses(back: int) -> torch.Tensor:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x), loop.labels[0], reduction="none")

    for epoch in range(args.epochs):
        loop.before_epoch(epoch, losses, lambda: x,
                          lambda lp: class_chunk_anchors(x, lp.labels[0], lp.trusted[0], 10, 5, gen))
        trusted, criterion = loop.trusted[0], loop.criterion(epoch)
        for _ in range(20):
            opt.zero_grad()
            criterion(model(x[trusted]), loop.labels[0][trusted]).backward()
            opt.step()
    print(f"logged to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
