"""RunLog: a resumed run keeps what the interrupted one recorded."""

import json

from tad_plugin.engine.runlog import RunLog

CONFIG = {"buffer": {"epochs": 3, "scale": (0.08, 1.0)}, "seed": 0}


def test_a_resumed_record_keeps_the_earlier_stages_until_recorded_again(tmp_path):
    path = tmp_path / "result_run.json"
    first = RunLog(path, CONFIG, 0, "cpu", command=["tad", "run"])
    first.stage("buffer", 100.0, experts=4)
    first.stage("distill", 50.0)
    first.result(test_acc_mean=0.5)

    again = RunLog(path, CONFIG, 0, "cpu", command=["tad", "run"])  # killed during eval, run again
    again.write()
    record = json.loads(path.read_text())
    assert record["stages"]["buffer"] == {"wall_time_s": 100.0, "experts": 4}  # nothing lost before re-recording
    assert record["results"] == {"test_acc_mean": 0.5}
    assert [a["command"] for a in record["attempts"]] == ["tad run"]

    again.stage("buffer", 1.5, experts=4)  # resumed from the finished experts
    record = json.loads(path.read_text())
    assert record["stages"]["buffer"] == {"wall_time_s": 1.5, "experts": 4, "earlier_wall_time_s": 100.0}
    assert record["stages"]["distill"]["wall_time_s"] == 50.0

    third = RunLog(path, CONFIG, 0, "cpu")
    third.stage("buffer", 2.0)
    record = json.loads(path.read_text())
    assert len(record["attempts"]) == 2 and record["stages"]["buffer"]["earlier_wall_time_s"] == 101.5


def test_another_config_or_a_foreign_file_starts_a_new_record(tmp_path):
    path = tmp_path / "result_run.json"
    RunLog(path, CONFIG, 0, "cpu").stage("buffer", 100.0)
    other = RunLog(path, {**CONFIG, "seed": 1}, 1, "cpu")
    other.write()
    assert json.loads(path.read_text())["stages"] == {} and "attempts" not in other.record
    path.write_text("[1, 2]")
    assert RunLog(path, CONFIG, 0, "cpu").record["stages"] == {}
    path.write_text("{not json")
    assert RunLog(path, CONFIG, 0, "cpu").record["stages"] == {}
