"""What ``tad`` does with faults: refusals before anything in --out is written, one-line errors (exit 2),
Ctrl-C (exit 2, saying what was kept), and a killed run that resumes to the uninterrupted result."""

import errno
import json
from pathlib import Path

import pytest
import torch

from tad_plugin.cli import QUICK_DEMO_OVERRIDES, main

ROOT = Path(__file__).resolve().parents[1]


def quick_noisy_argv(out, *extra):
    """``tad run`` with the settings of ``tad demo --quick``'s noisy arm (the ``quick_demo`` fixture's
    ``noisy`` folder is its uninterrupted result)."""
    sets = [f"{section}.{k}={json.dumps(v)}" for section, values in QUICK_DEMO_OVERRIDES.items()
            for k, v in values.items()]
    argv = ["run", "--config", str(ROOT / "tad_plugin" / "configs" / "demo.yaml"), "--no-tad", "--no-progress",
            "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    return argv + list(extra)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_rerun_on_another_gradient_route_keeps_its_images(quick_demo, tmp_path, capsys):
    """The gradient route changes memory and speed, not the images: the rerun reuses distilled.pt as it is
    (no distillation, not even from the checkpoint)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(quick_demo / "noisy", run)
    before = (run / "distilled.pt").read_bytes()
    assert main(quick_noisy_argv(run, "--set", "distill.inner_grad=explicit", "--set",
                                 "distill.recompute_steps=elementwise", "--set", "distill.cudnn_benchmark=true")) == 0
    assert "resuming the distillation" not in capsys.readouterr().err
    assert (run / "distilled.pt").read_bytes() == before


@pytest.mark.parametrize("extra, message", [
    (["--noise-seed", "1"], "already holds expert trajectories made with other settings"),
    (["--dataset", "digitz"], "unknown dataset"),
    (["--set", "distill.lr_img=50"], "belongs to a different run"),
])
def test_a_refused_rerun_leaves_the_earlier_run_byte_identical(quick_demo, tmp_path, capsys, extra, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(quick_demo / "noisy", run)
    (run / "result_run.json").write_text((run / "result_demo.json").read_text())  # as `tad run` leaves it
    before = snapshot(run)
    assert main(quick_noisy_argv(run, *extra)) == 2
    assert message in capsys.readouterr().err
    assert snapshot(run) == before


@pytest.mark.parametrize("argv, message", [
    (["run", "--out", ""], "--out is empty"),
    (["run", "--out", "{tmp}/file"], "is a file, not a folder"),
    (["run", "--device", "tpu9", "--out", "{tmp}/r"], "'tpu9' is not a device name"),
    (["run", "--config", "{tmp}/scalar.yaml", "--out", "{tmp}/r"], "data must be a mapping of its fields"),
    (["run", "--ipc", "200", "--out", "{tmp}/r"], "distill.ipc = 200 real images per class"),
    (["run", "--dataset", "{tmp}/one.npz", "--out", "{tmp}/r"], "needs at least two"),
    (["run", "--cifar-n", "{tmp}/c100n.pt", "--label-set", "fine", "--out", "{tmp}/r"], "has 10 classes"),
])
def test_a_fault_in_the_input_exits_2_with_one_line_before_writing(argv, message, tmp_path, capsys):
    from tad_plugin.data import ImageDataset, load_dataset, save_arrays

    ds = load_dataset("digits")
    (tmp_path / "file").write_text("a file")
    (tmp_path / "scalar.yaml").write_text("data: 5\n")
    one = ds.train_labels == 0
    save_arrays(ImageDataset("one", ds.train_images[one], ds.train_labels[one] * 0, ds.test_images[:5],
                             ds.test_labels[:5] * 0, ("zero",)), tmp_path / "one.npz")
    torch.save({"fine": torch.arange(len(ds.train_labels)) % 100}, tmp_path / "c100n.pt")  # labels up to 99
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("tad run: error:") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.write_bytes(f.read_bytes()[:3000]), "cannot read distillation checkpoint .*distill_checkpoint.pt: "
                                                     "not a torch file .*; delete it to start the distillation over"),
    (lambda f: torch.save({"iteration": 3}, f), "distill_checkpoint.pt is not a distillation checkpoint \\(no config, "
                                                "images, labels\\); delete it"),
])
def test_a_damaged_distillation_checkpoint_is_named_before_anything_is_written(quick_demo, tmp_path, capsys, damage,
                                                                               message):
    import re
    import shutil

    run = tmp_path / "run"
    shutil.copytree(quick_demo / "noisy", run)
    (run / "distilled.pt").unlink()  # the distillation resumes from its checkpoint
    damage(run / "distill_checkpoint.pt")
    before = snapshot(run)
    assert main(quick_noisy_argv(run)) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1
    assert snapshot(run) == before


def test_eval_refuses_a_set_of_another_dataset_or_not_a_distilled_set(quick_demo, tmp_path, capsys):
    from tad_plugin.data import ImageDataset, load_dataset, save_arrays

    ds = load_dataset("digits")  # the demo's set: 1x8x8 images of 10 classes
    rgb = ImageDataset("rgb", ds.train_images.expand(-1, 3, -1, -1).contiguous(), ds.train_labels,
                       ds.test_images.expand(-1, 3, -1, -1).contiguous(), ds.test_labels, ds.class_names)
    save_arrays(rgb, tmp_path / "rgb.npz")
    torch.save({"images": torch.zeros(2, 1, 8, 8)}, tmp_path / "other.pt")
    for synthetic, dataset, message in (
            (quick_demo / "noisy" / "distilled.pt", tmp_path / "rgb.npz", "distilled.pt holds 1x8x8 images of 10 "
             "classes but rgb has 3x8x8 images of 10: evaluate it on the dataset it was distilled from (--dataset)"),
            (tmp_path / "other.pt", "digits", "other.pt is not a distilled set (no entry 'labels'); give a file "
             "`tad distill` wrote")):
        argv = ["eval", "--synthetic", str(synthetic), "--dataset", str(dataset), "--out", str(tmp_path / "r")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not (tmp_path / "r").exists()


def test_a_gpu_device_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["run", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "torch sees no CUDA GPU on this machine; run with --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("where, err, doing, fix", [
    ("os.fsync", errno.ENOSPC, "writing", "free space there or choose another --out"),  # a full disk
    ("tempfile.mkstemp", errno.EROFS, "creating", "choose a writable --out"),  # a read-only one
])
def test_a_full_or_read_only_disk_names_the_file_and_the_fix(tmp_path, capsys, monkeypatch, where, err, doing, fix):
    import os

    from tad_plugin import files

    def refuse(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    module, name = where.split(".")
    monkeypatch.setattr(getattr(files, module), name, refuse)
    assert main(["buffer", "--no-tad", "--set", "buffer.num_experts=1", "--out", str(tmp_path / "r")]) == 2
    line = capsys.readouterr().err
    assert line.startswith(f"tad buffer: error: {os.strerror(err)} ({doing} {tmp_path / 'r' / 'result_buffer.json'}")
    assert line.rstrip().endswith(fix) and line.count("\n") == 1
    assert doing == "creating" or "bytes written before it failed" in line


def test_debug_shows_the_traceback():
    from tad_plugin.engine.config import ConfigError

    with pytest.raises(ConfigError, match="--out is empty"):
        main(["--debug", "run", "--out", ""])


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path, capsys, ctrl_c_after_first_expert):
    assert main(quick_noisy_argv(tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert f"interrupted; kept {tmp_path / 'r'}: 1 finished expert(s) in buffer/, result_run.json; the same " \
           f"command resumes" in err


class Killed(BaseException):
    """A kill at a chosen point (nothing catches it, as nothing runs after SIGKILL)."""


def test_a_run_killed_in_each_stage_resumes_to_the_uninterrupted_result(quick_demo, tmp_path, monkeypatch):
    """Killed in the buffer (the first of two experts saved), in distillation (after iteration 6, past the
    checkpoint of iteration 4) and in evaluation; the third resume gives the quick demo's noisy arm's result."""
    from tad_plugin.engine.evaluate import Evaluator
    from tad_plugin.engine.matching import TrajectoryMatcher
    from tad_plugin.engine.trajectories import TrajectoryStore

    def kill(cls, name, when):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            if when(self):
                raise Killed
            return out
        monkeypatch.setattr(cls, name, wrapper)

    argv = quick_noisy_argv(tmp_path / "r", "--set", "distill.checkpoint_every=4")
    kill(TrajectoryStore, "save_expert", lambda store: len(store.finished()) == 1)
    with pytest.raises(Killed):
        main(argv)
    monkeypatch.undo()
    kill(TrajectoryMatcher, "step", lambda m: m.iteration == 6)
    with pytest.raises(Killed):
        main(argv)
    monkeypatch.undo()
    assert torch.load(tmp_path / "r" / "distill_checkpoint.pt")["iteration"] == 4
    kill(Evaluator, "__call__", lambda ev: True)
    with pytest.raises(Killed):
        main(argv)
    monkeypatch.undo()
    assert main(argv) == 0
    ours, theirs = (torch.load(p / "distilled.pt") for p in (tmp_path / "r", quick_demo / "noisy"))
    assert torch.equal(ours["images"], theirs["images"]) and ours["syn_lr"] == theirs["syn_lr"]
    results = [json.loads((p).read_text())["results"] for p in (tmp_path / "r" / "result_run.json",
                                                                 quick_demo / "noisy" / "result_demo.json")]
    assert results[0]["test_acc"] == results[1]["test_acc"]


def test_wrap_pointed_at_another_folder_names_the_files_it_expected(tmp_path, capsys):
    (tmp_path / "buffer.py").write_text("print('not upstream')\n")  # a script of that name, no utils module
    assert main(["wrap", "mtt", "--repo", str(tmp_path), "--", "buffer.py"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tad wrap: error: --repo {tmp_path} is not a mtt checkout tad wrap knows: buffer.py and "
                          f"utils.py are expected there, utils.py missing") and err.count("\n") == 1


def test_a_cpu_run_or_audit_uses_one_thread_in_every_pool_unless_omp_num_threads_is_set(tmp_path, monkeypatch):
    from threadpoolctl import threadpool_info

    from tad_plugin import cli_audit, runs

    seen = []

    def record(*args, **kwargs):
        seen.append((torch.get_num_threads(), sorted({pool["num_threads"] for pool in threadpool_info()})))
        return {"test_acc_mean": 0.0, "test_acc_std": 0.0}

    def audit_record(*args, **kwargs):
        record()
        raise KeyboardInterrupt  # the thread counts are seen; the audit itself is not the point here

    monkeypatch.setattr(runs, "_pipeline", record)
    monkeypatch.setattr(cli_audit, "audit", audit_record)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["run", "--no-tad", "--device", "cpu", "--out", str(tmp_path / "a")]) == 0
        assert torch.get_num_threads() == 2  # restored when the command ends
        assert main(["audit", "--dataset", "digits", "--device", "cpu", "--out", str(tmp_path / "c")]) != 0
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert main(["run", "--no-tad", "--device", "cpu", "--out", str(tmp_path / "b")]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen[0] == (1, [1]) and seen[1] == (1, [1]) and seen[2][0] == 2


def help_text(capsys, *argv):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


def test_run_help_describes_the_run_and_shows_the_defaults(capsys):
    text = help_text(capsys, "run")
    assert "A run whose settings do not fit the folder's earlier run is refused" in text
    for default in ("(default digits)", "(default runs/tad)", "(default 10)", "(default 100)", "(default 5000)"):
        assert default in " ".join(text.split())


@pytest.mark.parametrize("argv", [[], ["wrap"], ["features", "embed"], ["features", "train"], ["demo"]])
def test_help_has_no_markup_and_no_empty_defaults(capsys, argv):
    text = help_text(capsys, *argv)
    assert "``" not in text and "(default: None)" not in text


def test_demo_names_the_arm_before_its_output(quick_demo, tmp_path, capsys):
    import shutil

    shutil.copytree(quick_demo, tmp_path / "demo")
    assert main(["demo", "--quick", "--no-progress", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    noisy, tad = (out.index(f"\n{arm} (run folder {tmp_path / 'demo' / name}):\n")
                  for arm, name in (("MTT (noisy)", "noisy"), ("MTT + TAD", "tad")))
    assert noisy < tad < out.index("distilled-set test acc")


def test_a_tad_buffer_killed_in_its_second_group_keeps_expert_0_s_trust_report(tmp_path, monkeypatch):
    """The report follows expert 0: a resumed buffer whose first group is saved keeps that report (and draws it)
    instead of replacing it with the next group's expert's."""
    from tad_plugin.engine.trajectories import TrajectoryStore

    def argv(out):
        run = quick_noisy_argv(out, "--set", "buffer.experts_per_group=1")
        return ["buffer", *["--tad" if a == "--no-tad" else a for a in run[1:]]]

    assert main(argv(tmp_path / "straight")) == 0
    save = TrajectoryStore.save_expert

    def killed_before_expert_1_is_saved(store, record):
        if record.index == 1:
            raise Killed
        return save(store, record)

    monkeypatch.setattr(TrajectoryStore, "save_expert", killed_before_expert_1_is_saved)
    with pytest.raises(Killed):
        main(argv(tmp_path / "r"))
    monkeypatch.undo()
    (tmp_path / "r" / "buffer" / "trust_report.png").unlink(missing_ok=True)
    assert main(argv(tmp_path / "r")) == 0
    reports = [(p / "buffer" / "trust_report.json").read_bytes() for p in (tmp_path / "r", tmp_path / "straight")]
    assert reports[0] == reports[1]
    pytest.importorskip("matplotlib")
    assert (tmp_path / "r" / "buffer" / "trust_report.png").is_file()
