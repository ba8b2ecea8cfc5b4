"""The CIFAR-10 grid of :mod:`.cifar10`: its cells (method, IPC, noise setting, arm) and their names, the paper's
numbers for them, the names of records made before the grid had IPC in its names, the budgets, the shared expert
buffers and the command of every cell, buffer and label audit."""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: the base configs of :data:`NOISES` (package data: ``tad_plugin/configs/``)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ---------------------------------------------------------------------- the grid

METHODS = ("mtt", "ftd", "datm", "att")
IPCS = (1, 10, 50)
#: noise setting -> (base config under :data:`CONFIGS`, noise rate; None: CIFAR-10N's own labels)
NOISES = {"sym20": ("cifar10_sym.yaml", 0.2), "sym40": ("cifar10_sym.yaml", 0.4),
          "asym20": ("cifar10_asym.yaml", 0.2), "asym40": ("cifar10_asym.yaml", 0.4),
          "c10n-worst": ("cifar10n_worst.yaml", None)}
#: The methods of Table 2's CIFAR-10N block (the paper has no DATM row there).
C10N_METHODS = ("mtt", "ftd", "att")
#: Table 3's configurations: letter -> (Reg, OL, IL), the reverse-CE regulariser, outer loop, inner loop.
#: A (none: DATM on the noisy labels) is the ``noisy`` arm, F (all three) the ``tad`` arm.
ABLATION = {"A": (False, False, False), "B": (True, False, False), "C": (False, True, False),
            "D": (True, True, False), "E": (False, True, True), "F": (True, True, True)}
#: Table 3's cells: DATM at IPC 50 under these noise settings.
ABLATION_CELLS = ("datm", 50, ("asym20", "asym40"))
#: The paper's two-stage protocol (its Table 4, there on CIFAR-100, whose images are not available here) on
#: CIFAR-10: a label audit cleans the noisy labels, then plain MTT distils, ``prune`` from the samples it does not
#: flag, ``relabel`` from all samples with its suggested labels; beside the ``noisy`` and ``tad`` cells of the same
#: setting. (method, IPCs, noise settings).
TWO_STAGE_CELLS = ("mtt", (10, 50), ("sym20", "sym40"))
#: The two-stage arms: arm -> (the detector of its first stage, one of :data:`AUDIT_DETECTORS`; what stage two
#: distils from, ``prune`` or ``relabel``). ``prune`` / ``relabel``: confident learning (cleanlab, 5 folds);
#: ``tadprune`` / ``tadrelabel``: TAD's own audit with the 20 experts of the label set's TAD buffer
#: (:func:`audit_buffer`), the question being whether TAD's audit then fresh experts beats TAD in one pass.
TWO_STAGE: dict[str, tuple[str, str]] = {"prune": ("cleanlab", "prune"), "relabel": ("cleanlab", "relabel"),
                                         "tadprune": ("tad20", "prune"), "tadrelabel": ("tad20", "relabel")}
TWO_STAGE_ARMS = tuple(TWO_STAGE)
#: Arms: noisy, tad, Table 3's B-E (A and F are the noisy and tad arms), and the two-stage arms.
ARMS = ("noisy", "tad", "B", "C", "D", "E", *TWO_STAGE_ARMS)
#: An arm of a buffer name, a regular expression: the longer names first, so that ``tadprune`` is never read as
#: ``tad`` (a name's parts are also delimited by ``-``).
ARM_PATTERN = "|".join(sorted(ARMS, key=len, reverse=True))
#: A cell name, Table 3's A and F included.
CELL_RE = re.compile(r"(?P<method>mtt|ftd|datm|att)-ipc(?P<ipc>\d+)-(?P<noise>sym20|sym40|asym20|asym40|c10n-worst)"
                     rf"-(?P<arm>{ARM_PATTERN}|A|F)")


def first_stage(arm: str) -> str:
    """The label-audit detector (of :data:`AUDIT_DETECTORS`) whose ``--write-pruned`` run is the first stage of the
    two-stage arm ``arm`` (a key of :data:`TWO_STAGE`)."""
    return TWO_STAGE[arm][0]


def audits_with_tad(arm: str) -> bool:
    """Whether ``arm`` is a two-stage arm whose first stage is TAD's audit (it reads the experts of the label set's
    TAD buffer, :func:`audit_buffer`), not cleanlab's."""
    return arm in TWO_STAGE and first_stage(arm) != "cleanlab"


def arm_parts(arm: str) -> tuple[bool, bool, bool]:
    """(Reg, OL, IL) of an arm: Table 3's letter, F for ``tad``, A (TAD off) for ``noisy`` and the two-stage
    arms."""
    return ABLATION["F" if arm == "tad" else arm if arm in ABLATION else "A"]


@dataclass(frozen=True)
class Cell:
    """One cell of the grid: ``method`` at ``ipc`` under ``noise`` (a key of :data:`NOISES`), ``arm`` one of
    :data:`ARMS`."""

    method: str
    ipc: int
    noise: str
    arm: str

    @property
    def name(self) -> str:
        return f"{self.method}-ipc{self.ipc}-{self.noise}-{self.arm}"

    @property
    def parts(self) -> tuple[bool, bool, bool]:
        """(Reg, OL, IL): which of TAD's parts are on."""
        return arm_parts(self.arm)

    @property
    def tad(self) -> bool:
        return self.arm not in ("noisy", *TWO_STAGE_ARMS)

    @property
    def setting(self) -> str:
        """``<method>-ipc<N>-<noise>``: the cell without its arm."""
        return f"{self.method}-ipc{self.ipc}-{self.noise}"


def cells() -> dict[str, Cell]:
    """Every cell of the grid, in the order of the paper's tables: Table 1 (noise, method, IPC, arm), Table 2's
    CIFAR-10N cells, Table 3's configurations B-E, the two-stage cells."""
    grid = [Cell(m, i, n, a) for n in ("sym20", "sym40", "asym20", "asym40") for m in METHODS for i in IPCS
            for a in ("noisy", "tad")]
    grid += [Cell(m, i, "c10n-worst", a) for m in C10N_METHODS for i in IPCS for a in ("noisy", "tad")]
    method, ipc, noises = ABLATION_CELLS
    grid += [Cell(method, ipc, n, a) for n in noises for a in "BCDE"]
    method, ipcs, noises = TWO_STAGE_CELLS
    grid += [Cell(method, i, n, a) for n in noises for i in ipcs for a in TWO_STAGE_ARMS]
    return {c.name: c for c in grid}


def aliases() -> dict[str, str]:
    """Table 3's A and F names -> the noisy and tad cells they are."""
    method, ipc, noises = ABLATION_CELLS
    return {f"{method}-ipc{ipc}-{n}-{letter}": f"{method}-ipc{ipc}-{n}-{arm}" for n in noises
            for letter, arm in (("A", "noisy"), ("F", "tad"))}


def resolve_cells(requested: Sequence[str]) -> list[str]:
    """The cell names ``requested`` stands for (names, Table 3 aliases, shell patterns, ``all``), in grid order
    without repeats.

    Raises:
        SystemExit: a name or pattern that matches no cell.
    """
    grid, alias = cells(), aliases()
    chosen: set[str] = set()
    for text in requested:
        if text == "all":
            chosen.update(grid)
            continue
        hits = {alias.get(n, n) for n in [*grid, *alias] if fnmatch.fnmatchcase(n, text)}
        if not hits:
            raise SystemExit(f"--cell {text}: no such cell (names are <method>-ipc<N>-<noise>-<arm>, e.g. "
                             f"mtt-ipc50-sym40-tad; --list shows them all)")
        chosen.update(hits)
    return [n for n in grid if n in chosen]


# ---------------------------------------------------------------------- the paper's numbers

#: Table 1 (CIFAR-10) and Table 2 (CIFAR-10N worst): (method, noise, IPC) -> (method, method + TAD); None = not
#: readable in the paper's text.
PAPER: dict[tuple[str, str, int], tuple[float | None, float | None]] = {
    ("mtt", "sym20", 1): (45.2, 46.2), ("mtt", "sym40", 1): (44.2, None),
    ("mtt", "sym20", 10): (62.4, 64.7), ("mtt", "sym40", 10): (57.5, 64.6),
    ("mtt", "sym20", 50): (68.6, 71.5), ("mtt", "sym40", 50): (60.2, 71.2),
    ("ftd", "sym20", 1): (45.3, 46.6), ("ftd", "sym40", 1): (43.9, 46.2),
    ("ftd", "sym20", 10): (61.3, 66.1), ("ftd", "sym40", 10): (56.2, 65.4),
    ("ftd", "sym20", 50): (67.9, 71.9), ("ftd", "sym40", 50): (61.1, 71.7),
    ("datm", "sym20", 1): (45.3, 46.1), ("datm", "sym40", 1): (42.9, 45.8),
    ("datm", "sym20", 10): (62.1, 66.0), ("datm", "sym40", 10): (58.2, 65.5),
    ("datm", "sym20", 50): (68.7, 72.6), ("datm", "sym40", 50): (61.5, 71.6),
    ("att", "sym20", 1): (44.5, 47.9), ("att", "sym40", 1): (41.8, 46.8),
    ("att", "sym20", 10): (62.4, 66.4), ("att", "sym40", 10): (58.1, 66.2),
    ("att", "sym20", 50): (69.3, 71.3), ("att", "sym40", 50): (63.8, 71.1),
    ("mtt", "asym20", 1): (44.5, 45.8), ("mtt", "asym40", 1): (40.9, 45.6),
    ("mtt", "asym20", 10): (58.7, 64.2), ("mtt", "asym40", 10): (54.4, 63.9),
    ("mtt", "asym20", 50): (67.5, 71.1), ("mtt", "asym40", 50): (59.1, 70.0),
    ("ftd", "asym20", 1): (45.0, 45.9), ("ftd", "asym40", 1): (42.5, 45.8),
    ("ftd", "asym20", 10): (60.9, 65.3), ("ftd", "asym40", 10): (53.4, 64.9),
    ("ftd", "asym20", 50): (63.6, 71.0), ("ftd", "asym40", 50): (53.3, 69.9),
    ("datm", "asym20", 1): (43.7, 46.0), ("datm", "asym40", 1): (38.7, 45.4),
    ("datm", "asym20", 10): (61.8, 64.8), ("datm", "asym40", 10): (57.3, 64.3),
    ("datm", "asym20", 50): (62.5, 72.4), ("datm", "asym40", 50): (55.0, 70.7),
    ("att", "asym20", 1): (43.5, 47.3), ("att", "asym40", 1): (41.9, 46.4),
    ("att", "asym20", 10): (62.1, 66.2), ("att", "asym40", 10): (54.6, 65.6),
    ("att", "asym20", 50): (67.3, 70.6), ("att", "asym40", 50): (61.5, 69.5),
    ("mtt", "c10n-worst", 1): (43.8, 46.6), ("mtt", "c10n-worst", 10): (55.7, 64.4),
    ("mtt", "c10n-worst", 50): (62.1, 69.9),
    ("ftd", "c10n-worst", 1): (43.4, 45.6), ("ftd", "c10n-worst", 10): (55.4, 63.8),
    ("ftd", "c10n-worst", 50): (60.3, 69.2),
    ("att", "c10n-worst", 1): (42.3, 45.9), ("att", "c10n-worst", 10): (58.3, 65.7),
    ("att", "c10n-worst", 50): (61.9, 68.9),
}
#: Entries of :data:`PAPER` read through the text's consistent glyph errors ('0' for a leading '6', '/' for a
#: leading '7'): (method, noise, IPC, arm); the page marks them.
PAPER_READ_THROUGH_GLYPHS = {("mtt", "sym20", 10, "tad"), ("mtt", "sym20", 50, "tad"), ("mtt", "sym40", 50, "tad"),
                             ("ftd", "sym20", 50, "noisy")}
#: Table 3 (DATM, IPC 50): configuration -> {noise: accuracy}.
PAPER_ABLATION = {"A": {"asym20": 62.5, "asym40": 55.0}, "B": {"asym20": 64.1, "asym40": 58.8},
                  "C": {"asym20": 69.4, "asym40": 65.1}, "D": {"asym20": 70.7, "asym40": 67.3},
                  "E": {"asym20": 69.3, "asym40": 67.6}, "F": {"asym20": 72.4, "asym40": 70.7}}


# ---------------------------------------------------------------------- records of earlier names

#: The IPC-10 settings of the records made before the grid had IPC in its names: old prefix -> (method, noise).
LEGACY_SETTINGS = {"sym40": ("mtt", "sym40"), "asym40": ("mtt", "asym40"), "c10n-worst": ("mtt", "c10n-worst"),
                   "ftd-sym40": ("ftd", "sym40"), "datm-sym40": ("datm", "sym40"), "att-sym40": ("att", "sym40"),
                   "att-c10n-worst": ("att", "c10n-worst")}
#: Cell -> the record of an earlier name that is that cell at the grid's iterations and experts (20 experts,
#: 1000 iterations; trained for 23 epochs, all IPC 10 reads): the page and the queue use it while the cell has
#: no record of its own.
LEGACY_RECORDS = {
    "mtt-ipc10-sym40-noisy": "sym40-noisy-e20-i1000", "mtt-ipc10-sym40-tad": "sym40-tad-e20-i1000",
    "mtt-ipc10-asym40-noisy": "asym40-noisy", "mtt-ipc10-asym40-tad": "asym40-tad",
    "mtt-ipc10-c10n-worst-noisy": "c10n-worst-noisy", "mtt-ipc10-c10n-worst-tad": "c10n-worst-tad",
    "ftd-ipc10-sym40-noisy": "ftd-sym40-noisy", "ftd-ipc10-sym40-tad": "ftd-sym40-tad",
    "datm-ipc10-sym40-noisy": "datm-sym40-noisy", "datm-ipc10-sym40-tad": "datm-sym40-tad",
    "att-ipc10-sym40-noisy": "att-sym40-noisy-i1000", "att-ipc10-sym40-tad": "att-sym40-tad-i1000",
    "att-ipc10-c10n-worst-noisy": "att-c10n-worst-noisy", "att-ipc10-c10n-worst-tad": "att-c10n-worst-tad",
}


def record_name(cell: str, results: Path) -> str:
    """The record stem that holds ``cell``: ``<cell>`` when ``<cell>.json`` exists or no earlier record stands
    for it, else its :data:`LEGACY_RECORDS` name."""
    legacy = LEGACY_RECORDS.get(cell)
    if legacy is None or (results / f"{cell}.json").is_file() or not (results / f"{legacy}.json").is_file():
        return cell
    return legacy


def cell_of_record(stem: str) -> tuple[Cell, str | None] | None:
    """The cell a record's name (``<cell>[-<tag>]``, or an earlier ``<setting>-<arm>[-<tag>]`` name) belongs
    to, with its tag; None for a name of neither form."""
    m = re.match(CELL_RE.pattern + r"(?:-(?P<tag>.+))?$", stem)
    if m:
        arm = {"A": "noisy", "F": "tad"}.get(m["arm"], m["arm"])
        return Cell(m["method"], int(m["ipc"]), m["noise"], arm), m["tag"]
    for old in sorted(LEGACY_SETTINGS, key=len, reverse=True):
        m = re.match(rf"{re.escape(old)}-(?P<arm>noisy|tad)(?:-(?P<tag>.+))?$", stem)
        if m:
            method, noise = LEGACY_SETTINGS[old]
            return Cell(method, 10, noise, m["arm"]), m["tag"]
    return None


def grid_records(results: str | Path) -> Path:
    """Where the grid's records are under the results folder ``results`` (``--results``): ``<results>/cifar10``."""
    return Path(results) / "cifar10"


# ---------------------------------------------------------------------- budgets and buffers

def method_defaults(method: str, ipc: int) -> dict:
    """``method``'s own settings for CIFAR-10 at ``ipc`` (its adapter's table)."""
    from tad_plugin.runs import method_adapter

    return method_adapter(method)[1]("cifar10", ipc)


def recipe(method: str, ipc: int) -> str:
    """The expert recipe of ``method`` at ``ipc``: ``sgd`` (MTT, ATT) or ``gsam-a<alpha>`` (DATM, FTD); batch
    size and epoch count are not part of it (see the module docstring)."""
    b = method_defaults(method, ipc)["buffer"]
    return "sgd" if b["optimizer"] == "sgd" else f"gsam-a{b['alpha']:g}"


def zca_of(method: str, ipc: int, sets: Sequence[str] = ()) -> bool:
    """Whether ``method``'s cells at ``ipc`` whiten with ZCA: ``data.zca`` of ``sets`` when they set it, else
    the method's own table (upstream's MTT, FTD and ATT IPC-50 rows: no ZCA; DATM: ZCA everywhere)."""
    from tad_plugin.engine.config import apply_overrides

    chosen = apply_overrides({}, list(sets)).get("data", {}).get("zca")
    return bool(method_defaults(method, ipc)["data"]["zca"] if chosen is None else chosen)


def preprocessing(zca: bool) -> str:
    """The preprocessing part of a buffer name: ``zca`` or ``raw``."""
    return "zca" if zca else "raw"


def served(rec: str, zca: bool, sets: Sequence[str] = ()) -> list[tuple[str, int]]:
    """The (method, IPC) rows whose cells distil from a buffer of recipe ``rec`` and preprocessing ``zca``
    (:func:`zca_of` under ``sets``)."""
    return [(m, i) for m in METHODS for i in IPCS if recipe(m, i) == rec and zca_of(m, i, sets) == zca]


def trainer(rec: str, zca: bool, sets: Sequence[str] = ()) -> tuple[str, int]:
    """The (method, IPC) whose config trains the buffer of recipe ``rec`` and preprocessing ``zca``: the served
    method with the most epochs of its own (DATM's 100 for GSAM alpha 0.3), then the first of :data:`METHODS`;
    its smallest served IPC.

    Raises:
        ValueError: no row of the grid reads such a buffer.
    """
    rows = served(rec, zca, sets)
    if not rows:
        raise ValueError(f"no cell reads a {rec} buffer with preprocessing {preprocessing(zca)}")
    method = max(dict.fromkeys(m for m, _ in rows), key=lambda m: (method_defaults(m, IPCS[0])["buffer"]["epochs"],
                                                                   -METHODS.index(m)))
    return method, min(i for m, i in rows if m == method)


def read_epochs(rec: str, zca: bool, sets: Sequence[str] = ()) -> int:
    """The epochs a buffer of recipe ``rec`` and preprocessing ``zca`` needs for every cell it serves: the max
    over those rows of max_start_epoch + expert_epochs + 1 (an expert's epoch 0 is its initialisation)."""
    return max(d["max_start_epoch"] + d["expert_epochs"] + 1
               for d in (method_defaults(m, i)["distill"] for m, i in served(rec, zca, sets)))


def buffer_kinds() -> dict[tuple[str, bool], list[tuple[str, int]]]:
    """(recipe, zca) -> the (method, IPC) rows its buffers serve, for every buffer kind of the grid."""
    kinds: dict[tuple[str, bool], list[tuple[str, int]]] = {}
    for m in METHODS:
        for i in IPCS:
            kinds.setdefault((recipe(m, i), zca_of(m, i)), []).append((m, i))
    return kinds


#: --budget -> (experts, experts trained at once, distillation iterations, evaluation interval, evaluation nets),
#: None = the method's own. "short": the grid's budget, one for every cell, so that cells compare with each other
#: (minutes of an H100 per cell); "long": the paper's number of experts and MTT's 5000 iterations; "full": each
#: method's own budget (100 experts x 50 epochs for MTT, 100 for DATM; ATT's README runs 60000 iterations at
#: IPC 10): hours per cell.
#: "short" and "long" train each buffer for :func:`read_epochs` epochs, "full" for the trainer's own.
BUDGETS: dict[str, tuple[int, int, int, int, int] | None] = {"short": (20, 20, 1000, 500, 5),
                                                              "long": (100, 25, 5000, 500, 5), "full": None}


#: The budget whose runs are the grid's own: their records are ``<cell>.json``, the results page's tables.
GRID_BUDGET = "short"


def budget_tag(budget: str, tag: str | None) -> str | None:
    """The tag that names a run at ``budget`` (its run folder, buffers and record, see :func:`run_name`): ``tag``
    at :data:`GRID_BUDGET`, else the budget's name before it (``long``, ``long-nobal``), so that runs of two
    budgets never resume, read or overwrite each other's."""
    if budget == GRID_BUDGET:
        return tag
    return f"{budget}-{tag}" if tag else budget


def sizes(budget: str) -> tuple[int, int, int, int, int]:
    """``budget``'s sizes in :data:`BUDGETS` (raises ValueError for "full", which has none: each method's own)."""
    found = BUDGETS[budget]
    if found is None:
        raise ValueError(f"the budget {budget!r} has no sizes of its own (each method's): pick short or long")
    return found


def budget_text(budget: str) -> str:
    """The budget in words, for the page and ``--help``."""
    if BUDGETS[budget] is None:
        return "each method's own budget"
    experts, _, iters, every, nets = sizes(budget)
    kinds = "; ".join(f"{kind_text(rec, zca)} for {rows_text(rows)}: {read_epochs(rec, zca)}"
                      for (rec, zca), rows in buffer_kinds().items())
    return (f"{experts} experts per buffer, one buffer per noise setting, arm, expert recipe and preprocessing "
            f"serving the cells that share them, trained for the epochs its longest reader needs (max over its "
            f"IPCs of max_start_epoch + expert_epochs + 1; {kinds}), {iters} distillation iterations, an "
            f"evaluation every {every} with {nets} nets, each method's own other settings (ZCA included)")


def kind_text(rec: str, zca: bool) -> str:
    """A buffer kind in words: ``SGD experts with ZCA``, ``GSAM (alpha 1) experts without ZCA``."""
    name = "SGD" if rec == "sgd" else f"GSAM (alpha {rec.removeprefix('gsam-a')})"
    return f"{name} experts {'with' if zca else 'without'} ZCA"


def rows_text(rows: Sequence[tuple[str, int]]) -> str:
    """(method, IPC) rows in words, methods of the same IPCs together: ``MTT and ATT at IPC 1 / 10``."""
    by_ipcs: dict[tuple[int, ...], list[str]] = {}
    for method in dict.fromkeys(m for m, _ in rows):
        by_ipcs.setdefault(tuple(i for m, i in rows if m == method), []).append(method.upper())
    return ", ".join(f"{' and '.join(ms)} at IPC {' / '.join(map(str, ipcs))}" for ipcs, ms in by_ipcs.items())


def budget_sets(budget: str, rec: str, zca: bool, sets: Sequence[str] = ()) -> list[str]:
    """The ``key=value`` settings of ``budget`` for a cell or buffer of recipe ``rec`` and preprocessing ``zca``
    (the cells :func:`served` under ``sets``)."""
    if BUDGETS[budget] is None:
        method, ipc = trainer(rec, zca, sets)
        return [f"buffer.epochs={method_defaults(method, ipc)['buffer']['epochs']}"]
    experts, group, iters, every, nets = sizes(budget)
    return [f"buffer.num_experts={experts}", f"buffer.experts_per_group={group}",
            f"buffer.epochs={read_epochs(rec, zca, sets)}", f"distill.iterations={iters}",
            f"distill.eval_every={every}", f"eval.num_eval={nets}"]


def switch_sets(cell: Cell) -> list[str]:
    """The ``key=value`` settings that switch off the parts of TAD ``cell``'s arm leaves out (Table 3): Reg off =
    ``tad.reg_weight=0`` (plain CE), OL off = ``tad.outer_loop=false`` and the two asymmetric-noise remedies of
    the division off, IL off = ``tad.inner_loop=false``; none for the noisy and tad arms; no synthetic noise
    (``data.noise=null``, ``data.noise_rate=0``) for the two-stage arms (their labels are the cleaned ones,
    :func:`_inputs`)."""
    if cell.arm in TWO_STAGE_ARMS:
        return ["data.noise=null", "data.noise_rate=0"]
    if cell.arm in ("noisy", "tad"):
        return []
    reg, outer, inner = cell.parts
    sets = [] if reg else ["tad.reg_weight=0"]
    if not outer:
        sets += ["tad.outer_loop=false", "tad.balance_classes=false", "tad.warmup_confidence_penalty=0"]
    return sets + ([] if inner else ["tad.inner_loop=false"])


#: The cells whose distillation recomputes whole unrolled steps (``distill.recompute_steps=true``) instead of the
#: CIFAR-10 configs' ``elementwise``, which keeps every step's convolution outputs: its memory grows with the unrolled
#: steps x images per step, and DATM's IPC 50 (80 x 500, against MTT's 30 x 500 at about 15 GiB) would not leave
#: room beside the buffers a batch trains at once.
WHOLE_STEP_RECOMPUTE = {("datm", 50)}


def memory_sets(cell: Cell) -> list[str]:
    """The ``key=value`` settings that keep ``cell``'s distillation inside its share of a batch's GPU memory
    (:data:`WHOLE_STEP_RECOMPUTE`); none for most cells."""
    return ["distill.recompute_steps=true"] if (cell.method, cell.ipc) in WHOLE_STEP_RECOMPUTE else []


#: Settings a cell's name or the runner's own options fix, which ``--set`` may not change: key -> what sets it.
#: A ``--set tad.enabled=false`` on a ``tad`` cell would record a run without TAD under the TAD cell's name.
CELL_KEYS = {"method": "the cell's method", "distill.ipc": "the cell's IPC", "data.noise": "the cell's noise",
             "data.noise_rate": "the cell's noise", "tad.enabled": "the cell's arm", "data.dataset": "--dataset",
             "data.cifar_n": "--cifar-n", "data.label_set": "the cell's noise", "seed": "--seeds", "out": "--out"}


def check_sets(sets: Sequence[str]) -> None:
    """Refuse a ``--set`` of ``sets`` that changes a setting of :data:`CELL_KEYS`.

    Raises:
        SystemExit: naming the setting, what sets it and the fix.
    """
    from tad_plugin.engine.config import apply_overrides

    def keys(tree: dict, prefix: str = "") -> list[str]:
        return [k for name, value in tree.items()
                for k in (keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [f"{prefix}{name}"])]

    for text in sets:
        for key in keys(apply_overrides({}, [text])):
            if key in CELL_KEYS:
                fix = ("give that option instead" if CELL_KEYS[key].startswith("--") else
                       "pick the cell that has the value you want (--list shows them)")
                raise SystemExit(f"--set {text}: {key} is set by {CELL_KEYS[key]}; {fix}")


def run_name(name: str, tag: str | None) -> str:
    """The run folder and record name of a cell or buffer under ``--tag``: ``<name>-<tag>``, or the name itself."""
    return f"{name}-{tag}" if tag else name


def seed_tag(tag: str | None, seed: int) -> str | None:
    """The tag of a run with training seed ``seed`` (``--seeds``): seed 0, the configs' own, keeps ``tag`` (the
    cell's or variant's record); another seed adds ``seed<N>`` (``...-tad-seed1``, ``...-tad-bal-seed1``)."""
    if seed == 0:
        return tag
    return f"{tag}-seed{seed}" if tag else f"seed{seed}"


def buffer_of(cell: Cell, sets: Sequence[str] = ()) -> str:
    """The name of the buffer ``cell`` distils from: ``<noise>-<arm>-<recipe>-<zca|raw>``, its preprocessing
    :func:`zca_of` under ``sets`` (Table 3's A and F share the noisy and tad arms' buffers)."""
    return (f"{cell.noise}-{cell.arm}-{recipe(cell.method, cell.ipc)}-"
            f"{preprocessing(zca_of(cell.method, cell.ipc, sets))}")


def _data_flags(cell: Cell, cifar_n: str | None) -> list[str]:
    base, rate = NOISES[cell.noise]
    flags = ["--config", str(CONFIGS / base)]
    if rate is not None:
        return flags + ["--noise-rate", str(rate)]
    if not cifar_n:
        raise SystemExit("the c10n-worst cells need --cifar-n PATH (the official CIFAR-10_human.pt)")
    return flags + ["--cifar-n", cifar_n]


def cleaning_dir(out: Path, noise: str, detector: str) -> Path:
    """The two-stage cells' first stage for the label set ``noise`` with ``detector`` (:func:`first_stage` of their
    arm): the ``tad audit --write-pruned`` run of :func:`audit_commands`' job ``audit-<noise>-<detector>``."""
    return audit_dir(out) / f"{noise}-{detector}"


def cleaning_files(out: Path, noise: str, detector: str, dataset: str) -> tuple[Path, Path]:
    """The first stage's outputs the two-stage cells of the label set ``noise`` and ``detector`` read
    (:func:`cleaning_dir`): the dataset without the flagged samples (``pruned/<dataset>.npz``) and the suggested
    labels (``labels_cleaned.npz``)."""
    first = cleaning_dir(out, noise, detector)
    return first / "pruned" / f"{Path(dataset).name.removesuffix('.npz')}.npz", first / "labels_cleaned.npz"


def audit_done(run: Path) -> bool:
    """Whether the ``tad audit`` run in the folder ``run`` finished: its record has the audit stage (recorded
    after every file is written)."""
    try:
        record = json.loads((run / "result_audit.json").read_text())
    except (OSError, ValueError):  # missing or unreadable: not done
        return False
    return "audit" in record.get("stages", {})


def cleaning_done(out: Path, noise: str, detector: str, dataset: str) -> bool:
    """Whether the first stage of the label set ``noise`` with ``detector`` finished under ``out``:
    :func:`audit_done` and both :func:`cleaning_files` exist (an audit run without ``--write-pruned`` is not
    one)."""
    return (audit_done(cleaning_dir(out, noise, detector))
            and all(p.is_file() for p in cleaning_files(out, noise, detector, dataset)))


def _inputs(cell: Cell, dataset: str, out: Path, cifar_n: str | None) -> list[str]:
    """The data options of ``cell``'s commands: its base config and noise, and ``--dataset``; a two-stage cell
    reads the output of its arm's first stage instead of noisy labels (:func:`cleaning_dir` of
    :func:`first_stage`): a ``prune`` arm the dataset without the flagged samples (``pruned/<dataset>.npz``, its
    audited labels as ``given_label``), a ``relabel`` arm the whole dataset with the suggested labels
    (``labels_cleaned.npz``, ``cleaned_label``).

    The first stage audits the labels of the noise setting, whatever the cell's preprocessing: TAD's audit reads
    the experts of the ZCA buffer :func:`audit_buffer` also for the IPC-50 cells, whose own buffers train on raw
    pixels; only its labels and the samples it keeps pass to stage two, so the preprocessing of stage one does not
    enter the cell's experts."""
    if cell.arm not in TWO_STAGE_ARMS:
        return [*_data_flags(cell, cifar_n), "--dataset", dataset]
    detector, keeps = TWO_STAGE[cell.arm]
    pruned, cleaned = map(str, cleaning_files(out, cell.noise, detector, dataset))
    config = ["--config", str(CONFIGS / NOISES[cell.noise][0])]
    if keeps == "prune":
        return config + ["--dataset", pruned, "--cifar-n", pruned, "--label-set", "given_label"]
    return config + ["--dataset", dataset, "--cifar-n", cleaned, "--label-set", "cleaned_label"]


def _sets(*groups: Sequence[str]) -> list[str]:
    return [x for group in groups for s in group for x in ("--set", s)]


def command(cell: str, dataset: str, out: Path, cifar_n: str | None, budget: str, sets: Sequence[str] = (),
            tag: str | None = None, shared: bool = True) -> list[str]:
    """``cell``'s ``tad run`` command into ``out/<run_name>``: distilling from its shared buffer under
    ``out/buffers/`` (``shared``), else training its own. Settings: the base YAML < the method, IPC, noise and
    arm < ``budget`` < Table 3's switches < :func:`memory_sets` < ``sets``."""
    c = cells()[cell]
    cmd = [sys.executable, "-m", "tad_plugin.cli", "run", *_inputs(c, dataset, out, cifar_n), "--method", c.method,
           "--ipc", str(c.ipc), "--tad" if c.tad else "--no-tad", _zca_flag(zca_of(c.method, c.ipc)),
           "--out", str(out / run_name(cell, tag))]
    if shared:
        cmd += ["--buffer", str(buffer_dir(out, buffer_of(c, sets), tag) / "buffer")]
    return cmd + _sets(budget_sets(budget, recipe(c.method, c.ipc), zca_of(c.method, c.ipc, sets), sets),
                       switch_sets(c), memory_sets(c), sets)


def _zca_flag(zca: bool) -> str:
    # explicit: an arrays file of another name than cifar10.npz would get no ZCA from the method's table
    return "--zca" if zca else "--no-zca"


def parse_buffer(buffer: str) -> tuple[str, str, str, bool]:
    """(noise, arm, recipe, zca) of a :func:`buffer_of` name."""
    m = re.fullmatch(rf"(.+)-({ARM_PATTERN})-(sgd|gsam-a[\d.]+)-(zca|raw)", buffer)
    if m is None:
        raise ValueError(f"not a buffer name: {buffer!r} (expected <noise>-<arm>-<recipe>-<zca|raw>)")
    return m[1], m[2], m[3], m[4] == "zca"


def buffer_dir(out: Path, buffer: str, tag: str | None = None) -> Path:
    """Where the shared buffer ``buffer`` is trained: ``out/buffers/<name>[-<tag>]`` (its experts in ``buffer/``)."""
    return out / "buffers" / run_name(buffer, tag)


def buffer_command(buffer: str, dataset: str, out: Path, cifar_n: str | None, budget: str,
                   sets: Sequence[str] = (), tag: str | None = None) -> list[str]:
    """The ``tad buffer`` command that trains the shared buffer ``buffer`` (a :func:`buffer_of` name) with the
    config of its recipe's :func:`trainer` and the arm's switches."""
    noise, arm, rec, zca = parse_buffer(buffer)
    method, ipc = trainer(rec, zca, sets)
    c = Cell(method, ipc, noise, arm)
    return [sys.executable, "-m", "tad_plugin.cli", "buffer", *_inputs(c, dataset, out, cifar_n), "--method", method,
            "--ipc", str(ipc), "--tad" if c.tad else "--no-tad", _zca_flag(zca),
            "--out", str(buffer_dir(out, buffer, tag)),
            *_sets(budget_sets(budget, rec, zca, sets), switch_sets(c), sets)]


#: The label-audit detectors of the detection table (docs/label-audit.md), run by ``--audit`` beside a TAD buffer
#: of MTT's expert recipe with ZCA and by ``--audit-only``, in the order the runner starts them: cleanlab on 5-fold
#: out-of-sample probabilities (it needs neither the SimCLR extractor nor a buffer), 5 TAD experts of their own (as
#: many models as cleanlab's folds: the same GPU time), and TAD's 20 experts of that buffer (no training when it is
#: trained).
AUDIT_DETECTORS = ("cleanlab", "tad5", "tad20")
#: The detection table's label sets that are not noise settings of the grid: name -> the CIFAR-10N label column
#: of ``--cifar-n`` they audit (with c10n-worst's settings otherwise).
AUDIT_ONLY_LABEL_SETS = {"c10n-aggre": "aggre_label", "c10n-random1": "random_label1"}
#: The label sets of the detection table, in its order: synthetic 40% noise and three CIFAR-10N label sets.
DETECTION_LABEL_SETS = ("sym40", "asym40", "c10n-worst", "c10n-aggre", "c10n-random1")


def audit_job(label_set: str, detector: str) -> str:
    """The job name of the label-audit run of ``detector`` (one of :data:`AUDIT_DETECTORS`) on ``label_set``:
    ``audit-<label set>-<detector>``, its run folder ``<label set>-<detector>`` under :func:`audit_dir`."""
    return f"audit-{label_set}-{detector}"


def parse_audit_job(name: str) -> tuple[str, str] | None:
    """``(label set, detector)`` of an :func:`audit_job` name; None for another job's name."""
    label_set, _, detector = name.removeprefix("audit-").rpartition("-")
    return (label_set, detector) if name.startswith("audit-") and detector in AUDIT_DETECTORS else None


def audit_dir(out: Path) -> Path:
    """Where the label audits go: ``out/audit/<label set>-<detector>``."""
    return out / "audit"


def audit_buffer(label_set: str) -> str:
    """The grid buffer whose settings the audits of ``label_set`` take: the TAD buffer of MTT's expert recipe
    with ZCA, ``<noise>-tad-sgd-zca`` (c10n-worst's for a label set of :data:`AUDIT_ONLY_LABEL_SETS`)."""
    return f"{'c10n-worst' if label_set in AUDIT_ONLY_LABEL_SETS else label_set}-tad-sgd-zca"


def needs_cifar_n(label_set: str) -> bool:
    """Whether the audits of ``label_set`` read CIFAR-10N's label file (``--cifar-n``)."""
    return label_set in AUDIT_ONLY_LABEL_SETS or NOISES[label_set][1] is None


def resolve_label_sets(requested: Sequence[str]) -> list[str]:
    """The label sets ``requested`` (``--audit-only``: noise settings of the grid or keys of
    :data:`AUDIT_ONLY_LABEL_SETS`), without repeats, in the order given.

    Raises:
        SystemExit: a name that is neither (the message lists the valid ones).
    """
    valid = [*NOISES, *AUDIT_ONLY_LABEL_SETS]
    for name in requested:
        if name not in valid:
            raise SystemExit(f"--audit-only {name}: no such label set (one of {', '.join(valid)})")
    return list(dict.fromkeys(requested))


def audit_commands(label_set: str, dataset: str, out: Path, cifar_n: str | None, budget: str,
                   sets: Sequence[str] = (), experts: Path | None = None) -> dict[str, list[str]]:
    """The ``tad audit`` jobs of the detection table's rows of ``label_set`` (a key of :data:`NOISES` or
    :data:`AUDIT_ONLY_LABEL_SETS`): ``audit-<label set>-<detector>`` (:func:`audit_job`), one per
    :data:`AUDIT_DETECTORS`, with the settings of :func:`audit_buffer` and, for a label set of
    :data:`AUDIT_ONLY_LABEL_SETS`, ``--label-set`` its column. ``experts``: the trained experts (``buffer/``) of that
    buffer, which ``tad20`` audits with; None: ``tad20`` trains its own, as that buffer would. cleanlab and
    ``tad20`` also write the dataset without the flagged samples (``--write-pruned``): they are the first stages of
    the two-stage arms (:data:`TWO_STAGE`), so that one run serves both the detection row and those cells."""
    column = AUDIT_ONLY_LABEL_SETS.get(label_set)
    extra = {"tad20": ([] if experts is None else ["--buffer", str(experts)]) + ["--write-pruned"],
             "tad5": ["--set", "buffer.num_experts=5", "--set", "buffer.experts_per_group=5"],
             "cleanlab": ["--detector", "cleanlab", "--write-pruned"]}
    jobs = {}
    for detector in AUDIT_DETECTORS:
        cmd = buffer_command(audit_buffer(label_set), dataset, out, cifar_n, budget, sets)
        cmd[cmd.index("buffer")] = "audit"
        cmd[cmd.index("--out") + 1] = str(audit_dir(out) / f"{label_set}-{detector}")
        jobs[audit_job(label_set, detector)] = cmd + (["--label-set", column] if column else []) + extra[detector]
    return jobs


def needs_extractor(cell_or_buffer: str, sets: Sequence[str]) -> bool:
    """Whether a cell's (or buffer's) experts run the inner loop, which embeds with the SimCLR extractor."""
    from tad_plugin.engine.config import apply_overrides

    arm = cells()[cell_or_buffer].arm if cell_or_buffer in cells() else parse_buffer(cell_or_buffer)[1]
    if not arm_parts(arm)[2]:
        return False
    return apply_overrides({}, list(sets)).get("tad", {}).get("inner_loop", True) is not False


#: Seconds of SimCLR training when a TAD buffer needs the default extractor and it does not exist yet: the
#: recorded 10-minute recipe (80.31% kNN@10 on an H100, results/features_probe/features_cifar10_crop008.md).
FEATURES_BUDGET_S = 590.0
