"""PhaseClock: totals per phase, continued from a saved file, and a clear error for a file that is not one."""

import time

import pytest

from tad_plugin.engine.phases import PhaseClock, load_phases


def test_phases_add_up_and_continue_from_a_saved_file(tmp_path):
    clock = PhaseClock("cpu")
    for _ in range(2):
        with clock.time("a"):
            time.sleep(0.01)
    slept = clock.timed("b", lambda x: time.sleep(x) or x)
    assert slept(0.02) == 0.02
    saved = tmp_path / "phases.json"
    clock.save(saved)
    loaded = load_phases(saved)
    assert list(loaded) == ["a", "b"] and loaded["a"]["calls"] == 2 and loaded["b"]["calls"] == 1
    assert loaded["a"]["seconds"] >= 0.02 and loaded["b"]["seconds"] >= 0.02
    resumed = PhaseClock("cpu", loaded)
    with resumed.time("a"):
        pass
    assert resumed.as_dict()["a"]["calls"] == 3
    assert resumed.as_dict()["a"]["seconds"] >= loaded["a"]["seconds"]


def test_a_phase_raising_still_counts_and_a_missing_file_is_none(tmp_path):
    clock = PhaseClock("cpu")
    with pytest.raises(RuntimeError), clock.time("fails"):
        raise RuntimeError("boom")
    assert clock.as_dict()["fails"]["calls"] == 1
    assert load_phases(tmp_path / "absent.json") is None


def test_a_file_that_is_not_a_phase_file_is_named(tmp_path):
    bad = tmp_path / "phases.json"
    bad.write_text('{"train": 3}')
    with pytest.raises(ValueError, match="phases.json is not a phase-timing file.*delete it"):
        load_phases(bad)


def test_the_experts_parts_do_not_overlap_and_a_run_says_where_its_time_went():
    from tad_plugin.engine.phases import DIVISION_AND_RECALIBRATION, expert_parts
    from tad_plugin.runs import time_summary

    phases = {"trust loop": {"seconds": 30.0, "calls": 23}, "train": {"seconds": 60.0, "calls": 23},
              "test": {"seconds": 10.0, "calls": 23}, "loss pass": {"seconds": 8.0, "calls": 13},
              "anchors": {"seconds": 6.0, "calls": 5}}
    parts = expert_parts(phases)
    assert list(parts) == ["train", "test", "loss pass", "anchors", DIVISION_AND_RECALIBRATION]
    assert parts[DIVISION_AND_RECALIBRATION] == (16.0, 23) and sum(s for s, _ in parts.values()) == 100.0
    evals = [{"iteration": 0, "seconds": 20.0}, {"iteration": 500, "seconds": 30.0}]
    line = time_summary({"buffer": {"phases": phases}, "distill": {"wall_time_s": 200.0, "evaluations": evals}})
    assert line == "time: experts 100 s (training 60%, tests 10%, TAD 30%), distillation 200 s (evaluations 25%)"
    assert time_summary({"buffer": {}, "eval": {"wall_time_s": 3.0}}) is None  # an older record: nothing to say
    noisy = {"train": {"seconds": 90.0, "calls": 23}, "test": {"seconds": 10.0, "calls": 23}}  # no trust loop ran
    assert time_summary({"buffer": {"phases": noisy}}) == "time: experts 100 s (training 90%, tests 10%)"
    assert expert_parts({}) == {}
