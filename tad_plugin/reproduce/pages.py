"""The results pages' parts that read one record at a time: a detail page per record (its settings, result and
curve, trusted space and trust-report plot, provenance and notes), the curves figure of many records, and a
record's accuracy and differences from another record in a few words. ``--page`` (:mod:`.tables`) builds the
paper-shaped tables on top and links each measured cell to its page here.

A record is the JSON ``tad run`` writes (``result_run.json``) as kept under ``<results>/cifar10/``: ``config`` (the
run's full config), ``results`` (final and best accuracy as fractions), ``stages`` (``buffer``: the trusted space
of a TAD run; ``distill``: the evaluations), ``command``, ``seed``, ``commit``, ``device``, ``wall_time_s``,
``started``, and optionally ``cell`` (the grid cell it ran as), ``note`` (free text) and ``partial`` (why it stopped
early).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO

from tad_plugin.engine.matching import ROUTE_SETTINGS
from tad_plugin.engine.phases import DIVISION_AND_RECALIBRATION, distill_parts, expert_parts
from tad_plugin.files import atomic_write

#: folder of the detail pages (and their curve PNGs), under the records' folder
DETAILS = "cells"
#: CIFAR-10's class names in label order.
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# ---------------------------------------------------------------------- reading records

def record_paths(results: Path) -> dict[str, Path]:
    """Record name -> JSON path of every run record in ``results`` and its ``clean`` folder (``clean/<stem>`` for
    those), trust reports left out, sorted by name."""
    paths = sorted(results.glob("*.json")) + sorted(results.glob("clean/*.json"))
    return {p.relative_to(results).with_suffix("").as_posix(): p for p in paths
            if not p.name.endswith(".trust_report.json")}


def evaluations(record: dict) -> list[tuple[int, float, float]]:
    """(iteration, mean %, std %) of every evaluation in a record: ``stages.distill.evaluations`` of a
    finished run, or the ``evaluations`` list (evaluations.json) kept with a partial one."""
    if "evaluations" in record:
        return [(h["iteration"], 100 * h["eval"]["mean"], 100 * h["eval"]["std"]) for h in record["evaluations"]]
    return [(h["iteration"], 100 * h["mean"], 100 * h["std"])
            for h in record.get("stages", {}).get("distill", {}).get("evaluations", [])]


def acc_text(record: dict | None) -> str:
    """``final +- std (best +- std @ iteration)`` in %, "not run" for None, "incomplete" without a final
    accuracy."""
    if record is None:
        return "not run"
    r = record.get("results", {})
    if "test_acc_mean" not in r:
        return "incomplete"
    last = f"{100 * r['test_acc_mean']:.1f} +- {100 * r['test_acc_std']:.1f}"
    if "test_acc_best_mean" not in r:
        return last
    best = f"{100 * r['test_acc_best_mean']:.1f} +- {100 * r['test_acc_best_std']:.1f}"
    return f"{last} (best {best} @ {r['best_iteration']})"


def run_budget(record: dict) -> str:
    """The training budget a record ran with: experts x epochs, iterations, evaluation nets (and lr_teacher)."""
    cfg = record.get("config", {})
    b, d = cfg.get("buffer", {}), cfg.get("distill", {})
    return (f"{b.get('num_experts')} experts x {b.get('epochs')} epochs, {d.get('iterations')} iterations, "
            f"{cfg.get('eval', {}).get('num_eval')} evaluation nets" + (
                f" (distill.lr_teacher {d['lr_teacher']})" if "lr_teacher" in d else ""))


def budget(record: dict) -> str:
    """:func:`run_budget`, and the share of wrong training labels the record measured (asym40 flips a share 0.4 of
    four classes: 0.16 of all labels)."""
    rate = record.get("results", {}).get("noise_rate")
    return run_budget(record) + (f"; {100 * rate:.1f}% of the training labels wrong" if rate is not None else "")


def remark(record: dict) -> str:
    """Why a record stopped early (``partial``), and the log points whose matching loss its distill stage found
    unstable; "" when neither."""
    parts = [record["partial"]] if record.get("partial") else []
    distill = record.get("stages", {}).get("distill", {})
    unstable = distill.get("unstable_loss_iterations")
    if unstable:
        parts.append(f"unstable matching loss (up to {distill.get('max_matching_loss', float('nan')):.2f}) at "
                     f"{len(unstable)} log points from iteration {unstable[0]}")
    return "; ".join(parts)


#: config keys a difference in which says nothing about the experiment: paths, speed routes, logging
NOT_VARIED = {"out", "device", "data.dataset", "data.root", "data.download", "data.cifar_n", "tad.features",
              "distill.checkpoint_every", "distill.eval_every", *(f"distill.{k}" for k in ROUTE_SETTINGS),
              "buffer.experts_per_group", "buffer.compile", "buffer.eval_batch_size", "buffer.cache_inputs",
              "buffer.channels_last", "buffer.amp", "eval.compile"}


def _flat(cfg: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def varies(record: dict, reference: dict, assumed: Mapping[str, object] | None = None) -> list[str]:
    """``key=value`` for each setting of ``record``'s config that differs from ``reference``'s, in config order.
    ``assumed``: ``section.key`` -> the value a record made before that setting existed ran with (None: none).
    Left out: :data:`NOT_VARIED`, other keys either lacks, None on either side (a default resolved at run time),
    and the TAD settings when neither run has TAD on."""
    mine = {**(assumed or {}), **_flat(record.get("config", {}))}
    theirs = {**(assumed or {}), **_flat(reference.get("config", {}))}
    no_tad = not (mine.get("tad.enabled") or theirs.get("tad.enabled"))
    return [f"{key}={value}" for key, value in mine.items()
            if key not in NOT_VARIED and key in theirs and theirs[key] != value and None not in (value, theirs[key])
            and not (no_tad and key.startswith("tad."))]


# ---------------------------------------------------------------------- figures

def draw_curve(ax, points: Iterable[tuple[int, float, float]], label: str, tad: bool) -> None:
    """One record's accuracy curve on ``ax``: mean +- std at each evaluation; TAD solid, without TAD dashed."""
    it, mean, std = zip(*points)
    ax.errorbar(it, mean, yerr=std, marker="o", ms=2.5, capsize=1.5, lw=1.2, ls="-" if tad else "--", label=label)


def _axes_style(ax) -> None:
    ax.set_xlabel("distillation iteration", fontsize=8)
    ax.set_ylabel("test accuracy (%)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _tad(record: dict) -> bool:
    return bool(record.get("config", {}).get("tad", {}).get("enabled", False))


def plot_curves(runs: Mapping[str, dict], path: Path, panel_of: Callable[[str], str],
                order: Iterable[str] = ()) -> bool:
    """Test accuracy vs distillation iteration of ``runs`` (label -> record) as one PNG, one panel per
    ``panel_of(label)`` (panels in ``order``, others after) so that each legend stays readable; False, writing
    nothing, without matplotlib or evaluations."""
    from tad_plugin.plotting import pyplot, save_png

    try:
        plt = pyplot("the results page's plots")
    except ImportError:
        return False
    curves = {label: pts for label, record in runs.items() if (pts := evaluations(record))}
    panels: dict[str, list[str]] = {}
    for label in curves:
        panels.setdefault(panel_of(label), []).append(label)
    if not panels:
        return False
    rank = {p: k for k, p in enumerate(order)}
    panels = dict(sorted(panels.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (panel, labels) in zip(axes.flat, panels.items()):
        if len(labels) > 10:  # the default cycle repeats its colours after 10
            ax.set_prop_cycle(color=plt.cm.tab20.colors)
        for label in labels:
            draw_curve(ax, curves[label], label.removeprefix(f"{panel}-").removeprefix("clean/"), _tad(runs[label]))
        ax.set_title(panel, fontsize=10)
        _axes_style(ax)
        ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("CIFAR-10 distillation curves (mean +- std of the evaluation nets; TAD solid, without TAD dashed)",
                 fontsize=10)
    save_png(fig, path, dpi=110)
    return True


def plot_record(record: dict, path: Path, title: str) -> bool:
    """One record's accuracy curve as a small PNG; False, writing nothing, without matplotlib or evaluations."""
    from tad_plugin.plotting import pyplot, save_png

    points = evaluations(record)
    if not points:
        return False
    try:
        plt = pyplot("the results page's plots")
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.2))
    draw_curve(ax, points, "with TAD" if _tad(record) else "without TAD", _tad(record))
    _axes_style(ax)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    save_png(fig, path, dpi=90)
    return True


# ---------------------------------------------------------------------- a record's detail page

_HASH = re.compile(r"(?:\bcommit )?\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b(?:'s)?")


def clean_notes(text: str) -> str:
    """A record's free-text note without run bookkeeping: the trailing ``Provenance: ...`` (how the run was
    launched; the detail page's provenance table holds the command, commit and device) and commit hashes."""
    text = re.split(r"(?:^|[.;]\s+)[Pp]rovenance:", text, maxsplit=1)[0].rstrip()
    text = _HASH.sub("", text)
    text = re.sub(r"\(\s*,\s*", "(", text)
    text = re.sub(r"\s*,\s*\)", ")", text)
    text = re.sub(r"\s*\(\s*\)", "", text)
    text = re.sub(r" {2,}", " ", text)
    text = re.sub(r"\s+([,.;])", r"\1", text)
    return text if not text or text.endswith(".") else text + "."


def _md(value: object) -> str:
    """A value in a Markdown table cell (pipes escaped)."""
    return str(value).replace("|", "\\|")


def _table(rows: Iterable[tuple[str, object]], head: tuple[str, str] = ("setting", "value")) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "| --- | --- |", *(f"| {k} | {_md(v)} |" for k, v in rows)]


def labels_text(record: dict) -> str:
    """The training labels of a record in words, with the share of them it measured wrong."""
    data = record.get("config", {}).get("data", {})
    noise, rate = data.get("noise"), data.get("noise_rate")
    if data.get("cifar_n"):
        text = f"CIFAR-10N human labels ({data.get('label_set')})"
    elif noise in (None, "none", "clean") or not rate:
        text = "clean"
    else:
        kind = "asymmetric (CIFAR-10's class flips)" if str(noise).startswith("asym") else str(noise)
        text = f"{kind}, noise rate {100 * rate:.0f}% (noise seed {data.get('noise_seed')})"
    wrong = record.get("results", {}).get("noise_rate")
    return text + (f"; {100 * wrong:.1f}% of the training labels wrong" if wrong is not None else "")


def settings_rows(record: dict) -> list[tuple[str, object]]:
    """The settings table of a record: method, IPC, labels, arm, experts, distillation, evaluation, buffer."""
    cfg = record.get("config", {})
    b, d, e, cell = cfg.get("buffer", {}), cfg.get("distill", {}), cfg.get("eval", {}), record.get("cell", {})
    rows: list[tuple[str, object]] = [("method", str(cfg.get("method", "mtt")).upper()), ("IPC", d.get("ipc")),
                                      ("labels", labels_text(record))]
    arm = "with TAD" if _tad(record) else "without TAD"
    if cell.get("arm") in tuple("BCDE"):
        parts = [name for name, on in (("Reg", cell.get("reg")), ("OL", cell.get("outer_loop")),
                                        ("IL", cell.get("inner_loop"))) if on]
        arm = f"Table 3 configuration {cell['arm']} ({', '.join(parts) or 'none'} on)"
    rows.append(("arm", arm))
    if "zca" in cfg.get("data", {}):
        rows.append(("preprocessing", "ZCA whitening" if cfg["data"]["zca"] else "raw pixels"))
    if b:
        optimizer = b.get("optimizer", "sgd")
        recipe = f"GSAM (rho {b.get('rho')}, alpha {b.get('alpha')})" if optimizer == "gsam" else optimizer.upper()
        rows.append(("experts", f"{b.get('num_experts')} x {b.get('epochs')} epochs, {recipe}, lr {b.get('lr')}, "
                                f"batch {b.get('batch_size')}"))
    if d:
        rows.append(("distillation", f"{d.get('iterations')} iterations, {d.get('syn_steps')} synthetic steps per "
                                     f"segment, {d.get('expert_epochs')} expert epochs, start epoch up to "
                                     f"{d.get('max_start_epoch')}, lr_teacher {d.get('lr_teacher')}"))
    if e:
        rows.append(("evaluation", f"{e.get('num_eval')} nets x {e.get('epochs')} epochs"))
    buf = record.get("stages", {}).get("buffer", {})
    source = cell.get("buffer") or buf.get("reused")
    if source:
        batch = buf.get("reused_meta", {}).get("buffer", {}).get("batch_size")
        rows.append(("experts read from", f"`{source}`" + (f" (expert batch {batch})" if batch else "")))
    if cfg.get("seed") is not None:
        rows.append(("training seed", cfg["seed"]))
    return rows


def tad_rows(record: dict) -> list[tuple[str, object]]:
    """``tad.<key>`` and its value for each TAD setting of a record with TAD on ("default" for None: the
    method's or the data's own); [] without TAD."""
    tad = record.get("config", {}).get("tad", {})
    if not tad.get("enabled"):
        return []
    return [(f"`tad.{key}`", "default" if value is None else value) for key, value in tad.items()
            if key not in ("enabled", "features")]


def provenance_rows(record: dict) -> list[tuple[str, object]]:
    """Command, config file, seed, commit, device, wall time, date and versions of a record."""
    command = str(record.get("command", ""))
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    config = next((words[k + 1] for k, w in enumerate(words[:-1]) if w == "--config"), None)
    rows: list[tuple[str, object]] = [("command", f"`{command}`" if command else "-")]
    if config:
        rows.append(("config file", f"`{config}`"))
    wall = record.get("wall_time_s")
    rows += [("seed", record.get("seed")), ("commit", str(record.get("commit", "-"))[:12]),
             ("device", record.get("device", "-")),
             ("wall time", f"{wall:.0f} s ({wall / 60:.1f} min)" if isinstance(wall, (int, float)) else "-"),
             ("date", str(record.get("started", "-"))[:10])]
    if "wall_time_s_with_buffer" in record:
        rows.append(("wall time with the experts", f"{record['wall_time_s_with_buffer']:.0f} s"))
    versions = ", ".join(f"{k} {record[k]}" for k in ("torch", "python") if record.get(k))
    if versions:
        rows.append(("versions", versions))
    return rows


def trusted_lines(name: str, record: dict, results: Path, page_dir: Path) -> list[str]:
    """The "Trusted space" section of a TAD record: the final trusted space at each consensus level, its least
    precise and least recalled classes, the recalls after the first round, and the trust-report plot beside
    the record (``<name>.trust_report.png``) when there is one; [] for a record without a trusted space."""
    from tad_plugin.trust_report import TrustReport, later_recalls_text, least_precise, least_recalled

    buf = record.get("stages", {}).get("buffer", {})
    if "trusted_precision" not in buf:
        return []
    levels = {"0.5": {k: buf[k] for k in ("trusted_fraction", "trusted_precision", "clean_recall")},
              **{k: v for k, v in buf.get("by_vote", {}).items() if float(k) != 0.5}}
    lines = ["## Trusted space", "",
             "The training samples the experts ended up trusting (the final division), by the share of the experts "
             "that trust a sample:", "",
             "| trusted by | share of the training set | precision | recall of the clean samples |",
             "| --- | ---: | ---: | ---: |"]
    for level, s in sorted(levels.items(), key=lambda kv: float(kv[0])):
        frac = s.get("trusted_fraction")
        lines.append(f"| >= {100 * float(level):.0f}% of the experts | "
                     f"{'-' if frac is None else f'{100 * frac:.1f}%'} | {100 * s['trusted_precision']:.1f}% | "
                     f"{100 * s['clean_recall']:.1f}% |")
    per_class = buf.get("per_class", [])
    worst, low = least_precise(per_class), least_recalled(per_class)
    if worst:
        lines += ["", "Least precise classes (trusted samples labelled with the class, and the true classes of the "
                      "others among them):", "",
                  "| class | precision | trusted | others |", "| --- | ---: | ---: | --- |"]
        lines += [f"| {CLASSES[r['class']]} | {percent(r['precision'])} | {r['trusted']} | "
                  + ", ".join(f"{m} {CLASSES[k]}" for k, m in r["intruders"]) + " |" for r in worst]
    if low:
        lines += ["", "Least recalled classes (share of their correctly labelled samples in the trusted space): "
                  + "; ".join(f"{CLASSES[r['class']]} {percent(r['clean_recall'])}" for r in low) + "."]
    later = buf.get("later_recalls")
    report_json = results / f"{name}.trust_report.json"
    if later is None and report_json.is_file():  # records written before the run summed them: from the report
        later = TrustReport.load_json(report_json).later_recalls()
    later_text = later_recalls_text(later)
    if later_text:
        lines += ["", later_text[0].upper() + later_text[1:] + "."]
    png = results / f"{name}.trust_report.png"
    if png.is_file():
        rel = Path(os.path.relpath(png, page_dir)).as_posix()
        guide = "../" * _depth(page_dir, results) + "docs/trust-report.md"
        lines += ["", "The trust report (how the division evolved over the experts' epochs; "
                      f"[how to read it]({guide})):", "", f"![trust report]({rel})"]
    return lines + [""]


#: The expert trainer's parts (tad_plugin.engine.phases.expert_parts) as the time table names them.
PART_NAMES = {"train": "training steps", "test": "test passes", "loss pass": "TAD: per-sample loss passes",
              "features": "TAD: features (waiting for the extractor, embedding the training set)",
              "anchors": "TAD: anchors (distilled from each group's early trajectory)",
              DIVISION_AND_RECALIBRATION: "TAD: division and recalibration (the rest of the trust loop)"}
#: The distillation's parts (tad_plugin.engine.phases.distill_parts) as the time table names them.
DISTILL_NAMES = {"matching": "matching iterations (and checkpoints)", "evaluations": "evaluations"}


def expert_lines(record: dict) -> list[str]:
    """The "Experts" section: their mean clean test accuracy after each epoch (``stages.buffer.expert_test_acc``),
    the epochs whose parameters distillation matches marked (from ``min_start_epoch`` to ``max_start_epoch - 1 +
    expert_epochs``: starts are drawn below ``max_start_epoch``); [] for a record without it (older records)."""
    curve = record.get("stages", {}).get("buffer", {}).get("expert_test_acc")
    if not curve:
        return []
    distill = record.get("config", {}).get("distill", {})
    first = distill.get("min_start_epoch", 0)
    last = distill.get("max_start_epoch", 1) - 1 + distill.get("expert_epochs", 0)  # starts below max_start_epoch
    epochs = range(1, len(curve) + 1)
    return ["## Experts", "",
            f"Their mean clean test accuracy (%) after each epoch; distillation matches their parameters from epoch "
            f"{first} to {last} (marked *).", "",
            "| epoch | " + " | ".join(f"{e}{'*' if first <= e <= last else ''}" for e in epochs) + " |",
            "| --- |" + " ---: |" * len(curve),
            "| accuracy | " + " | ".join(f"{100 * a:.1f}" for a in curve) + " |", ""]


def time_lines(record: dict) -> list[str]:
    """The "Where the time went" section: the experts' phases (from the buffer the record trained or read) and
    the distillation's matching and evaluation seconds; [] when the record has neither."""
    stages = record.get("stages", {})
    phases = stages.get("buffer", {}).get("phases") or {}
    if not record.get("config", {}).get("tad", {}).get("enabled", True):  # no trust loop ran (older records timed it)
        phases = {part: entry for part, entry in phases.items() if part != "trust loop"}
    rows = [("experts", PART_NAMES[part], seconds, calls) for part, (seconds, calls) in expert_parts(phases).items()]
    distill = distill_parts(stages.get("distill", {}))
    if distill and distill["evaluations"][1]:  # a record with its evaluations' seconds
        rows += [("distillation", DISTILL_NAMES[part], seconds, calls) for part, (seconds, calls) in distill.items()]
    if not rows:
        return []
    total = {stage: sum(r[2] for r in rows if r[0] == stage) for stage in dict.fromkeys(r[0] for r in rows)}
    lines = ["## Where the time went", "",
             "Wall seconds of each part, with the GPU's queued work included; the experts' rows are the buffer's own "
             "training (shared by the cells that read it, summed over resumed runs).", "",
             "| stage | part | seconds | calls | share of the stage |", "| --- | --- | ---: | ---: | ---: |"]
    for stage, part, seconds, calls in rows:
        share = percent(seconds / total[stage] if total[stage] else None)
        lines.append(f"| {stage} | {part} | {seconds:.1f} | {calls or '-'} | {share} |")
    return lines + [""]


def _depth(page_dir: Path, results: Path) -> int:
    """How many ``../`` lead from ``page_dir`` to the repository root (``results`` is ``<root>/<results>/<x>``)."""
    return len(page_dir.relative_to(results.parent.parent).parts)


def detail_path(results: Path, name: str) -> Path:
    """Where the detail page of record ``name`` lives: ``<results>/cells/<name>.md``."""
    return results / DETAILS / f"{name}.md"


def detail_page(name: str, record: dict, results: Path, about: str, index: Path) -> str:
    """The Markdown detail page of record ``name`` (its curve PNG is written beside it when matplotlib is
    there). ``about`` says in one line where the record stands (a table's cell, a variant of one); ``index`` is
    the results page it links back to."""
    path = detail_path(results, name)
    here = path.parent
    up = Path(os.path.relpath(index, here)).as_posix()
    lines = [f"# {name}", "", f"[Results]({up}) / {about}", ""]
    lines += ["## Settings", "", *_table(settings_rows(record)), ""]
    tad = tad_rows(record)
    if tad:
        lines += ["TAD settings:", "", *_table(tad), ""]
    lines += ["## Result", "", f"Test accuracy of the distilled images (mean +- std over the evaluation nets, %): "
              f"{acc_text(record)}.", ""]
    stopped = remark(record)
    if stopped:
        lines += [f"Note on this run: {stopped}.", ""]
    points = evaluations(record)
    if points:
        lines += ["| iteration | accuracy (%) | std |", "| ---: | ---: | ---: |",
                  *(f"| {it} | {m:.1f} | {s:.1f} |" for it, m, s in points), ""]
        png = path.with_suffix(".png")
        if plot_record(record, png, name):
            lines += [f"![accuracy curve]({png.name})", ""]
    lines += trusted_lines(name, record, results, here)
    lines += expert_lines(record)
    lines += time_lines(record)
    lines += ["## Provenance", "", *_table(provenance_rows(record), ("field", "value")), ""]
    note = clean_notes(record.get("note", ""))
    if note:
        lines += ["## Notes", "", note, ""]
    return "\n".join(lines)


def percent(share: float | None) -> str:
    """A share in 0-1 as a percentage with one decimal (``-`` for None: nothing to measure)."""
    return "-" if share is None else f"{100 * share:.1f}%"


def text_writer(text: str) -> Callable[[IO[bytes]], object]:
    """A writer of ``text`` (UTF-8) for :func:`~tad_plugin.files.atomic_write`."""
    return lambda f: f.write(text.encode())


def write_detail_pages(results: Path, about: Mapping[str, str], index: Path) -> dict[str, Path]:
    """Write the detail page of every record of :func:`record_paths` (``about``: name -> its one-line place,
    default "another run") under ``<results>/cells/``, remove pages and curves of records that are gone, and
    return name -> page path."""
    written: dict[str, Path] = {}
    for name, src in record_paths(results).items():
        record = json.loads(src.read_text())
        path = detail_path(results, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = detail_page(name, record, results, about.get(name, "another run"), index)
        atomic_write(path, text_writer(text))
        written[name] = path
    keep = {p for page in written.values() for p in (page, page.with_suffix(".png"))}
    for old in sorted((results / DETAILS).rglob("*")) if (results / DETAILS).is_dir() else []:
        if old.is_file() and old.suffix in (".md", ".png") and old not in keep:
            old.unlink()
    return written
