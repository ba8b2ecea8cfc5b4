"""The CIFAR-10 grid's queue (tad_plugin.reproduce.queue): the cells left in order, batches that fit the window,
riders and the time estimate."""

import json
from pathlib import Path

import pytest

from tad_plugin.reproduce import grid, queue

#: the repository's committed grid records
RESULTS = Path(__file__).parents[1] / "results" / "cifar10"


def test_the_queue_lists_the_cells_left_in_order_with_their_commands(tmp_path):
    done = {"results": {"test_acc_mean": 0.6}, "config": {}}
    (tmp_path / "mtt-ipc1-sym20-noisy.json").write_text(json.dumps(done))
    (tmp_path / "asym40-tad.json").write_text(json.dumps(done))  # an earlier name of mtt-ipc10-asym40-tad
    (tmp_path / "mtt-ipc1-sym20-tad.json").write_text(json.dumps({"results": {}, "config": {}}))  # unfinished
    text = queue.queue(tmp_path)
    assert "136 of 138 cells left" in text
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert [h.split(". ")[0] for h in heads] == ["## 1", "## 2", "## 3", "## 4", "## 5", "## 6", "## 7"]
    assert heads[0].startswith("## 1. MTT") and heads[1].startswith("## 2. Table 3") and "ATT" in heads[2]
    first = text.split("## 2.")[0]
    assert "--cell mtt-ipc1-sym20-tad" in first and "--cell mtt-ipc1-sym20-noisy" not in first
    assert "--cell mtt-ipc10-asym40-tad " not in first and "--cell mtt-ipc10-asym40-noisy" in first
    assert "--cell datm-ipc50-asym40-B" in text.split("## 3.")[0].split("## 2.")[1]
    assert "--cell mtt-ipc50-sym40-relabel" in text.split("## 5.")[1].split("## 6.")[0] and "Two-stage" in heads[4]
    assert "--cell datm-ipc10-sym20-noisy" in text.split("## 6.")[1]
    assert "--cifar-n" in text.split("## 4.")[1].split("## 5.")[0]
    cells_listed = [w for line in text.splitlines() for w in line.split() if w in grid.cells()]
    assert len(cells_listed) == len(set(cells_listed)) == 136  # each cell left in one batch
    batch1 = next(line for line in text.splitlines() if line.startswith("- batch 1:"))
    # both arms in one window, and ATT's cells that read the same buffers beside them
    assert batch1.startswith("- batch 1: 5 cells (2 of them of later sections, reading the same buffers), about ")
    assert batch1.endswith(" min; buffers `sym20-tad-sgd-zca`, `sym20-noisy-sgd-zca`")
    assert ("--jobs 4 \\\n    --cell mtt-ipc1-sym20-tad --cell mtt-ipc10-sym20-noisy --cell mtt-ipc10-sym20-tad \\\n"
            "    --cell att-ipc1-sym20-noisy --cell att-ipc1-sym20-tad\n" in text)
    third = text.split("## 3.")[1].split("## 4.")[0]
    assert "Some of its cells run in batches 1, " in third and "att-ipc1-sym20-tad" not in third  # batch 1's


def test_riders_join_a_batch_only_through_its_buffers_and_within_the_window():
    batch = ["mtt-ipc10-sym40-noisy"]
    took = queue.estimate(queue.batch_jobs(batch))
    names, took2 = queue.with_riders(batch, took, ["att-ipc10-sym40-noisy", "att-ipc10-sym40-tad",
                                                   "att-ipc50-sym40-noisy"])
    assert names == batch + ["att-ipc10-sym40-noisy"]  # the TAD buffer and the raw IPC-50 buffer are others
    assert took2 == queue.estimate(queue.batch_jobs(names)) >= took
    # a rider that would lengthen the batch past the window stays out: distillations at once share the GPU
    pair = ["mtt-ipc1-sym40-noisy", "mtt-ipc10-sym40-noisy"]
    took = queue.estimate(queue.batch_jobs(pair))
    riders = ["att-ipc1-sym40-noisy", "att-ipc10-sym40-noisy"]
    assert queue.with_riders(pair, took, riders, window=took) == (pair, took)
    three = queue.estimate(queue.batch_jobs(pair + riders[:1]))
    assert took < three < queue.estimate(queue.batch_jobs(pair + riders))
    assert queue.with_riders(pair, took, riders, window=three) == (pair + riders[:1], three)


def test_the_tad_audit_arms_cost_their_first_stage_the_tad_buffer_once_and_stay_together():
    pair = ["mtt-ipc10-sym40-tadprune", "mtt-ipc10-sym40-tadrelabel"]
    jobs = queue.batch_jobs(pair)
    assert [(j.name, j.after) for j in jobs] == [
        ("extractor", None), ("buffer-sym40-tad-sgd-zca", None), ("audit-sym40-tad20", "buffer-sym40-tad-sgd-zca"),
        ("buffer-sym40-tadprune-sgd-zca", "audit-sym40-tad20"), (pair[0], "buffer-sym40-tadprune-sgd-zca"),
        ("buffer-sym40-tadrelabel-sgd-zca", "audit-sym40-tad20"), (pair[1], "buffer-sym40-tadrelabel-sgd-zca")]
    assert jobs[2].work == queue.TAD_AUDIT_S
    tad_buffer = next(j for j in jobs if j.name == "buffer-sym40-tad-sgd-zca")
    assert tad_buffer.pause_at is not None  # its inner loop waits for the extractor trained beside it
    # the first stage costs: the TAD buffer's training and the audit pass, more than cleanlab's run
    stage = tad_buffer.work + queue.TAD_AUDIT_S
    cleanlab = queue.estimate(queue.batch_jobs(["mtt-ipc10-sym40-prune", "mtt-ipc10-sym40-relabel"]))
    alone = queue.estimate(queue.batch_jobs(pair, extractor=False))
    assert alone == pytest.approx(cleanlab - queue.CLEANLAB_S + stage, abs=2)
    assert queue.simulate(queue.batch_jobs(pair))[1] == 2  # the TAD buffer trains before the two, not beside
    # a batch that trains the TAD buffer for its own cell trains it once for both
    names = [j.name for j in queue.batch_jobs(["mtt-ipc10-sym40-tad", *pair])]
    assert names.count("buffer-sym40-tad-sgd-zca") == 1 and names.index("audit-sym40-tad20") > names.index(
        "buffer-sym40-tad-sgd-zca")
    # the two arms stay in one batch even over the window, and ride together or not at all
    assert queue.batches(pair, window=60.0) == [(pair, queue.estimate(jobs))]
    att = ["att-ipc1-sym40-noisy", "att-ipc1-sym40-tad"]
    took = queue.estimate(queue.batch_jobs(att))
    assert queue.reads(pair[0]) == {"sym40-tadprune-sgd-zca", "sym40-tad-sgd-zca"}
    both = queue.estimate(queue.batch_jobs(att + pair))
    assert queue.with_riders(att, took, pair, window=both) == (att + pair, both)
    assert queue.with_riders(att, took, pair, window=both - 1) == (att, took)
    assert queue.with_riders(att, took, ["mtt-ipc10-sym40-prune"], window=1e9) == (att, took)  # cleanlab's: no


def test_estimate_shares_the_gpu_between_saturating_jobs_and_pauses_tad_buffers_for_the_extractor():
    J = queue._SimJob
    assert queue.estimate([J("buffer-a", True, 100), J("buffer-b", True, 100)]) == 200  # shared evenly
    assert queue.estimate([J("buffer-a", True, 100), J("cell", False, 50, after="buffer-a")]) == 150
    assert queue.estimate([J("buffer-a", True, 100), J("x", False, 50)], slots=1) == 150  # one at a time
    # the TAD buffer shares with the extractor until its anchors (10 s of work, 20 s of wall), waits for the
    # extractor's 300 s, then has the GPU to itself for its last 90 s
    assert queue.estimate([J("extractor", True, 300), J("buffer-t", True, 100, pause_at=10)]) == 390


def test_the_queue_batches_fit_the_window_with_both_arms_of_a_cell_together_where_they_fit():
    names = [n for n, c in grid.cells().items() if c.method == "mtt" and c.noise != "c10n-worst" and c.arm in (
        "noisy", "tad")]
    cut = queue.batches(names)
    assert sorted(n for b, _ in cut for n in b) == sorted(names)  # each cell once
    for batch, took in cut:
        assert len({grid.buffer_of(grid.cells()[n]) for n in batch}) <= queue.QUEUE_BUFFERS
        assert took <= queue.WINDOW_S or len(batch) == 1  # only a single cell may be over the window
        assert took == queue.estimate(queue.batch_jobs(batch))
    first, took = cut[0]
    assert first == ["mtt-ipc1-sym20-noisy", "mtt-ipc1-sym20-tad", "mtt-ipc10-sym20-noisy", "mtt-ipc10-sym20-tad"]
    jobs = queue.batch_jobs(first)
    assert [j.name for j in jobs][:3] == ["extractor", "buffer-sym20-noisy-sgd-zca", "mtt-ipc1-sym20-noisy"]
    tad = next(j for j in jobs if j.name == "buffer-sym20-tad-sgd-zca")
    train = 20 * 23 * queue.EXPERT_EPOCH_S * queue.TAD_BUFFER_FACTOR
    assert tad.work == queue.BUFFER_START_S + train + queue.ANCHORS_S
    # features first needed at the first recalibration, after the warm-up
    assert tad.pause_at == queue.BUFFER_START_S + train * 10 / 23
    # a larger window keeps the IPC-50 pair together (two buffers at most: a batch of its own)
    assert [b for b, _ in queue.batches(names[:6], window=3600)] == [names[:4], names[4:6]]


def test_the_long_budget_pays_anchors_per_expert_group_and_more_iterations():
    short, long = (queue.batch_jobs(["mtt-ipc10-sym40-tad"], budget=b, extractor=False) for b in ("short", "long"))
    (buf_s, cell_s), (buf_l, cell_l) = short, long
    start = queue.BUFFER_START_S
    assert buf_s.work == start + 20 * 23 * queue.EXPERT_EPOCH_S * queue.TAD_BUFFER_FACTOR + queue.ANCHORS_S  # 1 group
    assert buf_l.work == (start + 100 * 23 * queue.EXPERT_EPOCH_S * queue.TAD_BUFFER_FACTOR + queue.ANCHORS_S
                          + 3 * queue.ANCHORS_LATER_S)  # 4 groups of 25: the first compiles and embeds
    assert cell_s.work == queue.DISTILL_S[10]
    share = queue.DISTILL_FIXED_SHARE
    assert cell_l.work == pytest.approx(queue.DISTILL_S[10] * (share + (1 - share) * 5))  # 5000 vs 1000 iterations


def test_the_last_section_lists_the_detection_rows_left_and_how_they_get_made(tmp_path):
    done = {"results": {"test_acc_mean": 0.6}, "config": {}}
    for cell in ("mtt-ipc1-c10n-worst-tad", "mtt-ipc10-c10n-worst-tad", "att-ipc1-c10n-worst-tad",
                 "att-ipc10-c10n-worst-tad"):  # no batch left trains c10n-worst's TAD buffer of MTT's recipe
        (tmp_path / f"{cell}.json").write_text(json.dumps(done))
    for row in ("sym40-cleanlab", "sym40-tad5", "sym40-tad20", "asym40-cleanlab"):
        (tmp_path / "audit" / row).mkdir(parents=True)
        (tmp_path / "audit" / row / "result_audit.json").write_text("{}")
    text = queue.queue(tmp_path)
    section = text.split("## 7. Label-audit detection rows")[1]
    assert "- `sym40`: recorded." in section
    # a grid label set whose buffer a batch trains: --audit on that batch
    line = next(x for x in section.splitlines() if x.startswith("- `asym40`:"))
    batch = int(line.split("`--audit` on batch ")[1].split()[0])
    assert line.startswith(f"- `asym40`: tad5, tad20 left: `--audit` on batch {batch} (it trains "
                           "`asym40-tad-sgd-zca`; about ") and line.endswith((" min with them).",
                                                                               " min with them, over the window)."))
    head = next(x for x in text.splitlines() if x.startswith(f"- batch {batch}:"))
    assert "`asym40-tad-sgd-zca`" in head.split("; buffers ")[1]
    alone = int(head.split("about ")[1].split()[0])
    assert int(line.split("about ")[1].split()[0]) >= alone  # the audits take free slots or lengthen it
    # the others: --audit-only batches after the grid's, two tad20 audits at most in each
    last = max(int(x.split()[2].rstrip(":")) for x in text.split("## 7.")[0].splitlines() if x.startswith("- batch "))
    assert f"- `c10n-worst`: cleanlab, tad5, tad20 left: batch {last + 1} below." in section
    assert f"- `c10n-aggre`: cleanlab, tad5, tad20 left: batch {last + 1} below." in section
    assert f"- `c10n-random1`: cleanlab, tad5, tad20 left: batch {last + 2} below." in section
    assert (f"- batch {last + 1}: the detection rows of `c10n-worst`, `c10n-aggre`, without distilling, about "
            in section)
    assert ("--cifar-n CIFAR-10_human.pt --gpus 0 --jobs 4 \\\n    --audit-only c10n-worst --audit-only c10n-aggre\n"
            in section)
    assert section.rstrip().endswith("--audit-only c10n-random1\n  ```")


def test_audit_batches_share_the_window_and_model_each_audit_as_its_own_experts():
    left = {"c10n-aggre": ["cleanlab", "tad5", "tad20"], "c10n-random1": ["cleanlab", "tad5", "tad20"]}
    jobs = queue.audit_batch_jobs(left)
    assert [j.name for j in jobs] == ["extractor", "audit-c10n-aggre-cleanlab", "audit-c10n-random1-cleanlab",
                                      "audit-c10n-aggre-tad5", "audit-c10n-random1-tad5", "audit-c10n-aggre-tad20",
                                      "audit-c10n-random1-tad20"]
    cl, tad5, tad20 = jobs[1], jobs[3], jobs[5]
    assert (cl.saturates, cl.work, cl.pause_at) == (False, queue.CLEANLAB_S, None)
    for job, experts in ((tad5, 5), (tad20, 20)):  # one expert group each: the anchors once
        train = experts * 23 * queue.EXPERT_EPOCH_S * queue.TAD_BUFFER_FACTOR
        start = queue.BUFFER_START_S
        assert job.saturates and job.work == start + train + queue.ANCHORS_S
        assert job.pause_at == start + train * 10 / 23
    both = queue.estimate(jobs)
    assert both > queue.estimate(queue.audit_batch_jobs({"c10n-aggre": left["c10n-aggre"]}))
    assert queue.audit_batches(left, window=both) == [(list(left), both)]  # one batch where they fit
    assert [b for b, _ in queue.audit_batches(left, window=both - 1)] == [["c10n-aggre"], ["c10n-random1"]]
    # a label set with only cleanlab left: no extractor, no TAD experts
    assert [j.name for j in queue.audit_batch_jobs({"sym40": ["cleanlab"]})] == ["audit-sym40-cleanlab"]
    assert queue.audit_batches(left, budget="full") == [(list(left), None)]


def test_the_audits_beside_a_batch_cost_cleanlab_and_5_experts_and_tad20_reads_its_buffer():
    batch = ["mtt-ipc1-asym40-tad"]
    alone = queue.estimate(queue.batch_jobs(batch))
    both = queue.with_audits(batch, {"asym40": ["cleanlab", "tad5", "tad20"]})
    assert both > alone and both == queue.with_audits(batch, {"asym40": ["cleanlab", "tad5"]})
    assert queue.with_audits(batch, {"asym40": ["tad20"]}) == alone


def test_another_budgets_queue_counts_its_own_records_and_has_no_detection_rows(tmp_path):
    done = {"results": {"test_acc_mean": 0.6}, "config": {}}
    (tmp_path / "mtt-ipc10-sym40-tad.json").write_text(json.dumps(done))       # the short budget's record
    (tmp_path / "mtt-ipc10-sym40-noisy-long.json").write_text(json.dumps(done))  # the long budget's
    text = queue.queue(tmp_path, budget="long")
    assert "137 of 138 cells left" in text and "named `<cell>-long`" in text
    assert "--cell mtt-ipc10-sym40-tad" in text and "--cell mtt-ipc10-sym40-noisy" not in text
    assert "Label-audit detection rows" not in text and "--audit" not in text
    assert queue.finished("mtt-ipc10-sym40-tad", tmp_path) and not queue.finished("mtt-ipc10-sym40-tad", tmp_path,
                                                                                  "long")


def test_the_estimate_is_near_every_recorded_batch():
    """The committed batches (results/cifar10/batches/*/schedule.md, one H100 each) against the planner: a new
    batch that lands far from its estimate means the planning figures need measuring again."""
    checked = queue.recorded_batches(RESULTS)
    assert [name for name, _, _ in checked][:2] == ["2026-12-07-h100", "2026-12-07-h100-2"]
    for name, took, est in checked:
        assert est == pytest.approx(took, rel=0.2), name
    assert [(round(t / 60, 1)) for _, t, _ in checked[:2]] == [19.0, 16.8]  # the schedules' last ends


def test_recorded_batches_read_the_schedule_and_leave_out_audits(tmp_path):
    """A batch with an ``--audit`` job its cells do not need is left out; a two-stage batch, whose cells need
    their cleanlab audit, is checked with it."""
    head = ["| job | GPU | start (s) | end (s) | wall (min) | exit |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    rows = ["| buffer-sym40-noisy-sgd-zca | 0 | 0 | 300 | 5.0 | 0 |",
            "| mtt-ipc10-sym40-noisy | 0 | 300 | 600 | 5.0 | 0 |"]
    audit = ["| audit-sym40-cleanlab | 0 | 0 | 100 | 1.7 | 0 |"]
    two_stage = ["| buffer-sym40-prune-sgd-zca | 0 | 100 | 400 | 5.0 | 0 |",
                 "| mtt-ipc10-sym40-prune | 0 | 400 | 700 | 5.0 | 0 |"]
    for name, lines in (("a", rows), ("b", rows + audit), ("c", audit + two_stage)):
        (tmp_path / "batches" / name).mkdir(parents=True)
        (tmp_path / "batches" / name / "schedule.md").write_text("\n".join(head + lines) + "\n")
    expected = queue.estimate(queue.batch_jobs(["mtt-ipc10-sym40-noisy"], extractor=False))
    expected_two_stage = queue.estimate(queue.batch_jobs(["mtt-ipc10-sym40-prune"], extractor=False))
    assert [job.name for job in queue.batch_jobs(["mtt-ipc10-sym40-prune"])][0] == "audit-sym40-cleanlab"
    assert queue.recorded_batches(tmp_path) == [("a", 600.0, expected), ("c", 700.0, expected_two_stage)]
    assert "a took 10.0 min, estimated " in queue.queue(tmp_path)


def test_gpu_shares_give_each_job_its_demand_or_an_even_split():
    assert queue.gpu_shares({"a": 0.3, "b": 0.3}) == {"a": 0.3, "b": 0.3}  # room for both
    assert queue.gpu_shares({"buf": 1.0, "d": 0.2}) == pytest.approx({"d": 0.2, "buf": 0.8})  # d keeps its need
    assert queue.gpu_shares({"a": 1.0, "b": 1.0, "c": 0.65, "e": 0.65}) == pytest.approx(
        {"a": 0.25, "b": 0.25, "c": 0.25, "e": 0.25})
