"""Two-stage pipelines (detect wrong labels, then distil) against MTT + TAD in one pass, on scikit-learn's digits.

The paper's Table 4 protocol at ``tad demo``'s settings (40% symmetric noise, 8 experts x 30 epochs, IPC 10,
120 iterations, 5 evaluation nets), on the CPU, over several seeds (each seed draws its own noise and its own
initialisations). Per seed: noisy MTT, MTT on the clean labels, MTT + TAD (also without its reverse-CE
regulariser, matching only from the end of its warm-up on, with shorter warm-ups, and with its images initialised
from noise, beside noisy MTT initialised so), and four two-stage pipelines: ``tad audit`` with cleanlab (5-fold
out-of-sample probabilities) or with TAD's own experts, whose flagged samples are then pruned or relabelled before
plain MTT distils::

    python reproduction/two_stage_digits.py --out runs/two_stage_digits        # every missing run, then the page
    python reproduction/two_stage_digits.py --page                             # the page from the records only

Runs resume: a finished run (its ``result_run.json`` or ``result_audit.json``) is not run again. Each finished
run's record is copied to ``results/two_stage_digits/seed<N>/<run>.json``; the page ``results/two_stage_digits.md``
is written from those records.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from tad_plugin.engine.trajectories import TrajectoryStore
from tad_plugin.files import atomic_write, atomic_write_json
from tad_plugin.plotting import pyplot, save_png
from tad_plugin.runs import expert_curve

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "two_stage_digits"
PAGE = ROOT / "results" / "two_stage_digits.md"
FIGURE = ROOT / "results" / "two_stage_digits_experts.png"
DEMO = ROOT / "tad_plugin" / "configs" / "demo.yaml"
NOISE = ["--dataset", "digits", "--noise", "symmetric", "--noise-rate", "0.4"]
CLEAN = ["--set", "data.noise=null", "--set", "data.noise_rate=0"]
DETECTORS = {"cleanlab": ["--detector", "cleanlab"], "tad": []}

#: The distillation runs: name -> (what trains the experts, ``tad run`` arguments after the config; ``{audit}``
#: is the run folder of the audit the pipeline reads), in the page's order.
ARMS: dict[str, tuple[str, list[str]]] = {
    "noisy": ("MTT on the noisy labels", ["--no-tad"]),
    "tad": ("MTT + TAD, one pass", []),
    "tad-noreg": ("MTT + TAD without the reverse-CE regulariser", ["--set", "tad.reg_weight=0"]),
    "tad-min5": ("MTT + TAD, matching from the end of the warm-up (epoch 5) on",
                 ["--set", "distill.min_start_epoch=5"]),
    **{f"tad-warm{w}": (f"MTT + TAD, a warm-up of {w} epoch{'s' if w > 1 else ''} (the demo: 5), anchors from epoch 3",
                        ["--set", f"tad.warmup_epochs={w}", "--set", "tad.anchor_epoch=3"]) for w in (1, 2, 3)},
    "noisy-noiseinit": ("MTT on the noisy labels, images initialised from noise",
                        ["--no-tad", "--set", "distill.pix_init=noise"]),
    "tad-noiseinit": ("MTT + TAD, images initialised from noise (not from the trusted samples)",
                      ["--set", "distill.pix_init=noise"]),
    **{f"{d}-{how}": (f"{'cleanlab' if d == 'cleanlab' else 'TAD audit'} {how}, then MTT",
                      ["--no-tad", *CLEAN, *(
                          ["--dataset", "{audit}/pruned/digits.npz", "--cifar-n", "{audit}/pruned/digits.npz",
                           "--label-set", "given_label"] if how == "prune" else
                          ["--cifar-n", "{audit}/labels_cleaned.npz", "--label-set", "cleaned_label"])])
       for d in DETECTORS for how in ("prune", "relabel")},
    "clean": ("MTT on the clean labels", ["--no-tad", *CLEAN]),
}


def seed_args(seed: int) -> list[str]:
    """A seed's run seed and noise seed (the same number: each seed is a fresh draw of both)."""
    return ["--seed", str(seed), "--noise-seed", str(seed)]


def commands(out: Path, seed: int) -> dict[str, list[str]]:
    """Run name -> its ``tad`` arguments for ``seed`` under ``out/seed<N>``: the two audits first (the pipelines
    read them), then :data:`ARMS`."""
    base = out / f"seed{seed}"
    jobs = {f"audit-{d}": ["audit", *NOISE, *seed_args(seed), *extra, "--write-pruned", "--out",
                           str(base / f"audit-{d}")] for d, extra in DETECTORS.items()}
    for name, (_, extra) in ARMS.items():
        audit = base / f"audit-{name.split('-')[0]}"
        jobs[name] = ["run", "--config", str(DEMO), *seed_args(seed),
                      *(a.replace("{audit}", str(audit)) for a in extra), "--out", str(base / name)]
    return jobs


def record_of(run: Path) -> Path:
    """The record a finished run folder holds (``result_audit.json`` or ``result_run.json``)."""
    return run / ("result_audit.json" if run.name.startswith("audit-") else "result_run.json")


def run_study(out: Path, seeds: list[int], results: Path) -> None:
    """Run every missing job of ``seeds`` one after another and copy each record into ``results/seed<N>/``."""
    for seed in seeds:
        for name, argv in commands(out, seed).items():
            record = record_of(out / f"seed{seed}" / name)
            if not record.is_file():
                print(f"seed {seed}: tad {' '.join(argv)}", flush=True)
                subprocess.run([sys.executable, "-m", "tad_plugin.cli", *argv], check=True)
            atomic_write_json(with_expert_curve(record), results / f"seed{seed}" / f"{name}.json")


def with_expert_curve(record: Path) -> dict:
    """The record ``record`` (a run's ``result_run.json`` or ``result_audit.json``), its buffer stage given the
    experts' mean test accuracy per epoch (``expert_test_acc``) from the run's ``buffer/`` when the version of
    tad_plugin that ran it did not record it (marked ``expert_test_acc_added``)."""
    data = json.loads(record.read_text())
    stage, buffer = data.get("stages", {}).get("buffer"), record.parent / "buffer"
    if stage is not None and "expert_test_acc" not in stage and (buffer / "manifest.json").is_file():
        stage["expert_test_acc"] = expert_curve(TrajectoryStore.open(buffer))
        stage["expert_test_acc_added"] = "read from the run's buffer afterwards by reproduction/two_stage_digits.py"
    return data


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {sd:.2f}"


def page(results: Path) -> str:
    """The page's Markdown from the records under ``results/seed<N>/``. Raises ValueError when there are none."""
    seeds = sorted(int(p.name.removeprefix("seed")) for p in results.glob("seed*") if p.is_dir())
    if not seeds:
        raise ValueError(f"no records under {results}/seed<N>/: run the study first (--out DIR)")
    recs = {s: {p.stem: json.loads(p.read_text()) for p in (results / f"seed{s}").glob("*.json")} for s in seeds}
    acc = {name: {s: 100 * recs[s][name]["results"]["test_acc_mean"] for s in seeds if name in recs[s]}
           for name in ARMS}
    head = " | ".join(f"seed {s}" for s in seeds)
    lines = [
        "# Two-stage pipelines against MTT + TAD on digits (CPU)", "",
        "The paper's Table 4 protocol on scikit-learn's digits with 40% symmetric noise: a detector cleans the labels, "
        "then plain MTT distils with `tad demo`'s settings (8 experts x 30 epochs, IPC 10, 120 iterations, 5 "
        "evaluation nets), beside noisy MTT, MTT + TAD and MTT on the clean labels at the same settings. Two "
        "detectors, each used in two ways: `tad audit` with cleanlab (5-fold out-of-sample probabilities) and with "
        "TAD (its own experts and trust loop); *prune* drops the flagged samples, *relabel* gives them the detector's "
        "suggested label. Each seed draws its own noise and initialisations; one CPU thread. Generated by "
        "`python reproduction/two_stage_digits.py --page` from the records in `two_stage_digits/seed<N>/`, each "
        "number linked to its own (its command, config, commit and wall time).", "",
        "Test accuracy (%, mean of the 5 evaluation nets):", "",
        f"| pipeline | {head} | mean +- sd over seeds |",
        "| --- | " + " | ".join("---:" for _ in seeds) + " | ---: |",
    ]
    for name, (what, _) in ARMS.items():
        if acc[name]:
            cells = " | ".join(f"[{acc[name][s]:.2f}]({results.name}/seed{s}/{name}.json)" if s in acc[name] else "-"
                               for s in seeds)
            lines.append(f"| {what} | {cells} | {_mean_sd(list(acc[name].values()))} |")
    lines += ["", "Detection against the clean labels (mean over seeds):", "",
              "| detector | flagged | precision % | recall % | F1 % | suggested labels right % | time s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for d in DETECTORS:
        runs = [recs[s][f"audit-{d}"] for s in seeds if f"audit-{d}" in recs[s]]
        if runs:
            det = [r["results"]["detection"] for r in runs]
            mean = {k: statistics.mean(x[k] for x in det) for k in ("flagged", "precision", "recall", "f1",
                                                                      "suggested_accuracy")}
            lines.append(f"| {'cleanlab, 5 folds' if d == 'cleanlab' else 'TAD (`tad audit` default)'} | "
                         f"{mean['flagged']:.0f} | {100 * mean['precision']:.1f} | {100 * mean['recall']:.1f} | "
                         f"{100 * mean['f1']:.1f} | {100 * mean['suggested_accuracy']:.1f} | "
                         f"{statistics.mean(r['wall_time_s'] for r in runs):.0f} |")
    lines += ["", *claims(acc, seeds), *expert_section(recs, seeds)]
    lines += ["The same comparison on CIFAR-10 (the two detectors' pipelines against MTT + TAD, "
              "on the GPU) is in [the grid's two-stage table](README.md#two-stage-baselines-clean-the-labels-then-"
              "distil).", "", "Commands (`reproduction/two_stage_digits.py` runs them for each seed N; "
              "`C=tad_plugin/configs/demo.yaml`):", "", "```bash"]
    for argv in commands(Path("runs/two_stage_digits"), seeds[0]).values():  # written for any seed N
        line = f"tad {' '.join(argv)}".replace(str(DEMO), "$C").replace(f"seed{seeds[0]}/", "seedN/")
        lines.append(line.replace(f"--seed {seeds[0]} --noise-seed {seeds[0]}", "--seed N --noise-seed N"))
    return "\n".join([*lines, "```", ""])


#: The epochs after which the page lists the experts' test accuracy (the demo's experts train for 30).
SHOWN_EPOCHS = (1, 3, 5, 10, 16, 20, 30)
#: The pipelines whose expert curves the figure draws.
DRAWN = ("noisy", "tad", "tad-relabel", "cleanlab-prune", "clean")


def expert_curves(recs: dict[int, dict[str, dict]], seeds: list[int]) -> dict[str, list[float]]:
    """Run name -> the experts' mean test accuracy (%) after each epoch, averaged over ``seeds``, for the
    distillation runs whose records carry it on every seed; a run whose experts trained as an earlier run's did
    (the same curve: only its distillation differs) is left out."""
    curves = {}
    for name in ARMS:
        got = [recs[s][name].get("stages", {}).get("buffer", {}).get("expert_test_acc") for s in seeds
               if name in recs[s]]
        curve = [100 * statistics.mean(values) for values in zip(*got)] if len(got) == len(seeds) and all(got) else []
        if curve and curve not in curves.values():  # a run that distilled from another's experts: no row of its own
            curves[name] = curve
    return curves


def expert_section(recs: dict[int, dict[str, dict]], seeds: list[int]) -> list[str]:
    """The page's table of the experts' test accuracy along their training (and the figure of
    :data:`DRAWN`'s curves, when matplotlib is installed), with the epochs distillation matches marked."""
    curves = expert_curves(recs, seeds)
    if not curves:
        return []
    distill = recs[seeds[0]]["noisy" if "noisy" in recs[seeds[0]] else next(iter(curves))]["config"]["distill"]
    window = distill["max_start_epoch"] - 1 + distill["expert_epochs"]  # starts are drawn below max_start_epoch
    shown = [e for e in SHOWN_EPOCHS if e <= len(next(iter(curves.values())))]
    lines = [f"The experts' mean clean test accuracy (%) after each epoch, mean over the seeds (distillation "
             f"matches segments that end by epoch {window}; marked *):", "",
             "| pipeline | " + " | ".join(f"epoch {e}{'*' if e <= window else ''}" for e in shown)
             + f" | mean over epochs 1-{window} |", "| --- |" + " ---: |" * (len(shown) + 1)]
    for name, curve in curves.items():
        lines.append(f"| {ARMS[name][0]} | " + " | ".join(f"{curve[e - 1]:.1f}" for e in shown)
                     + f" | {statistics.mean(curve[:window]):.1f} |")
    if all(n in curves for n in ("noisy", "tad", "tad-relabel")):
        inside = {n: statistics.mean(curves[n][:window]) for n in ("noisy", "tad", "tad-relabel")}
        lines += ["", f"Over the epochs distillation matches (1-{window}), one-pass TAD's experts average "
                  f"{inside['tad']:.1f}%, against {inside['noisy']:.1f}% for the noisy experts and "
                  f"{inside['tad-relabel']:.1f}% for fresh experts on TAD's audited labels; after the last epoch "
                  f"{curves['tad'][-1]:.1f}% against {curves['noisy'][-1]:.1f}% and {curves['tad-relabel'][-1]:.1f}%."]
    try:
        plt = pyplot("the experts' figure")
    except ImportError as exc:
        print(f"no figure: {exc}", file=sys.stderr)
        return [*lines, ""]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in (n for n in DRAWN if n in curves):
        ax.plot(range(1, len(curves[name]) + 1), curves[name], label=ARMS[name][0])
    ax.axvspan(0.5, window + 0.5, color="0.9", zorder=0, label=f"epochs distillation matches (1-{window})")
    ax.set(xlabel="expert epoch", ylabel="experts' test accuracy (%)",
           title=f"Digits, 40% symmetric noise: the experts along their training ({len(seeds)} seeds)")
    ax.legend(fontsize=8)
    save_png(fig, FIGURE)
    return [*lines, "", f"![The experts' test accuracy along their training]({FIGURE.name})", ""]


def claims(acc: dict[str, dict[int, float]], seeds: list[int]) -> list[str]:
    """What the records say about one pass against two stages, as sentences checked on every seed."""
    two_stage = [f"{d}-{how}" for d in DETECTORS for how in ("prune", "relabel")]
    both = [s for s in seeds if s in acc["tad"] and all(s in acc[n] for n in two_stage)]
    if not both:
        return []
    above = all(acc[n][s] > acc["tad"][s] for n in two_stage for s in both)
    gap = [statistics.mean(acc[n][s] for n in two_stage) - acc["tad"][s] for s in both]
    verdict = "above" if above else "not always above"
    text = (f"On every seed ({len(both)}), every two-stage pipeline ends {verdict} MTT + TAD in one pass: the "
            f"two-stage mean is {min(gap):.1f} to {max(gap):.1f} points higher per seed.")
    if all(s in acc["clean"] and s in acc["noisy"] for s in both):
        closed = [(acc["tad"][s] - acc["noisy"][s]) / (acc["clean"][s] - acc["noisy"][s]) for s in both]
        text += (f" One pass closes {100 * statistics.mean(closed):.0f}% of the gap between noisy and clean MTT "
                 "on average.")
    variants = [n for n in ARMS if n.startswith("tad-") and n not in two_stage]
    if all(s in acc[n] for n in variants for s in both):
        short = [statistics.mean(acc[n][s] for n in two_stage) - max(acc[n][s] for n in ["tad", *variants])
                 for s in both]
        if min(short) > 0:
            said = (f"none reaches the two-stage mean on any seed: the best of them per seed ends {min(short):.1f} "
                    f"to {max(short):.1f} points below it")
        else:
            said = f"the best of them reaches the two-stage mean on {sum(x <= 0 for x in short)} of {len(both)} seeds"
        text += (f" Of the one-pass variants (without the regulariser, matching after the warm-up, shorter "
                 f"warm-ups, images initialised from noise), {said}.")
    pairs = [("noisy", "tad"), ("noisy-noiseinit", "tad-noiseinit")]
    if all(s in acc[n] for pair in pairs for n in pair for s in both):
        real, noise = (statistics.mean(acc[t][s] - acc[n][s] for s in both) for n, t in pairs)
        text += (f" TAD's gain over noisy MTT is {real:+.2f} points with the images initialised from real samples "
                 f"(TAD's from its trusted ones) and {noise:+.2f} with both initialised from noise.")
    return [text, ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="run folder of the study (runs what is missing, then writes the page)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--page", action="store_true", help="only write the page from the records")
    args = p.parse_args(argv)
    if not args.page and args.out is None:
        p.error("give --out DIR to run the study, or --page to write the page from the records")
    if not args.page:
        run_study(args.out, [int(s) for s in args.seeds.split(",")], RESULTS)
    text = page(RESULTS)
    atomic_write(PAGE, lambda f: f.write(text.encode()))
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
