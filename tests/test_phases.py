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
