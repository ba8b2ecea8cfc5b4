"""The ``tad`` command: the quick demo end to end, resume, argument/config merging, clear errors."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from tad_plugin.cli import DEMO_CONFIG, build_parser, config_from_args, main
from tad_plugin.engine.trajectories import TrajectoryStore

ROOT = Path(__file__).resolve().parents[1]



def test_quick_demo_runs_end_to_end(quick_demo, capsys):
    summary = json.loads((quick_demo / "demo.json").read_text())
    noisy, tad = summary["rows"]
    assert noisy["arm"] == "MTT (noisy)" and tad["arm"] == "MTT + TAD"
    assert abs(summary["noise_rate"] - 0.4) < 0.01
    assert noisy["trusted_size"] == noisy["train_size"] == 1293
    assert tad["trusted_size"] < tad["train_size"]                # TAD diverted away from some samples
    assert tad["trusted_precision"] > noisy["trusted_precision"]  # ... mostly mislabelled ones
    for row in (noisy, tad):
        assert 0.0 <= row["test_acc_mean"] <= 1.0
        record = json.loads(Path(row["record"]).read_text())
        for key in ("command", "config", "seed", "commit", "device", "wall_time_s", "results", "stages"):
            assert key in record
        assert record["results"]["noise_rate"] == summary["noise_rate"]
        assert set(record["stages"]) == {"buffer", "distill", "eval"}
        # distill.eval_every 5 of 10 iterations (0: the initial images, as upstream)
        curve = record["stages"]["distill"]["evaluations"]
        assert [e["iteration"] for e in curve] == [0, 5, 10] and all(0 <= e["mean"] <= 1 for e in curve)
        assert all(e["seconds"] > 0 for e in curve)  # what the evaluations cost of the distillation's time
        phases = record["stages"]["buffer"]["phases"]  # where the experts' time went
        assert phases["train"]["calls"] == phases["test"]["calls"] == record["config"]["buffer"]["epochs"]
        assert ("loss pass" in phases) == (row is tad)
        # the experts' mean test accuracy after each epoch, from their files
        store = TrajectoryStore.open(quick_demo / ("tad" if row is tad else "noisy") / "buffer")
        expected = [round(float(a), 4) for a in store.test_accuracy().mean(0)]
        assert record["stages"]["buffer"]["expert_test_acc"] == expected
        assert len(expected) == record["config"]["buffer"]["epochs"] and all(0 < a <= 1 for a in expected)
        best = max(curve, key=lambda e: e["mean"])  # the papers' number: the best evaluation point
        assert record["results"]["test_acc_best_mean"] == best["mean"]
        assert record["results"]["best_iteration"] == best["iteration"]
    assert (quick_demo / "tad" / "buffer" / "manifest.json").is_file()
    rounds = json.loads((quick_demo / "tad" / "buffer" / "trust_report.json").read_text())["rounds"]
    recals = [r for r in rounds if r["stage"] == "recalibration"]
    # the agreement was recorded
    assert recals and all(0 <= r["recalled_expert_agrees"] <= r["recalled"] for r in recals)
    record = json.loads((quick_demo / "tad" / "result_demo.json").read_text())
    later = record["stages"]["buffer"]["later_recalls"]  # the rounds after the first, summed into the record
    assert later["recalled"] == sum(r["recalled"] for r in recals[1:])
    assert torch.load(quick_demo / "tad" / "distilled.pt", weights_only=True)["images"].shape == (20, 1, 8, 8)
    pytest.importorskip("matplotlib")
    for arm in ("noisy", "tad"):  # the run's figures beside its distilled set
        for name in ("distilled.png", "curve.png"):
            assert (quick_demo / arm / name).read_bytes()[:4] == b"\x89PNG"


def test_plot_draws_a_finished_runs_figures_again(quick_demo, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = quick_demo / "tad"
    for name in ("distilled.png", "curve.png", "buffer/trust_report.png"):
        (run / name).unlink()
    assert main(["plot", str(run)]) == 0
    for name in ("distilled.png", "curve.png", "buffer/trust_report.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path)]) == 2
    assert "holds neither distilled.pt nor buffer/trust_report.json" in capsys.readouterr().err


def test_rerun_resumes_finished_stages(quick_demo):
    assert main(["demo", "--quick", "--no-progress", "--out", str(quick_demo)]) == 0
    record = json.loads((quick_demo / "tad" / "result_demo.json").read_text())
    assert record["stages"]["distill"].get("resumed") is True
    assert len(record["stages"]["distill"]["evaluations"]) == 3 and "test_acc_best_mean" in record["results"]
    assert record["stages"]["buffer"]["experts"] == 2


def test_a_rerun_repairs_what_a_kill_or_a_damaged_copy_left(quick_demo, tmp_path, caplog, capsys):
    """A run killed after writing distilled.pt but before its figures gets them on the rerun; a truncated
    distilled.pt is made again from the checkpoint, not offered back as the fix; a lost expert is trained again;
    the rerun says what it resumes; the distillation's seconds (over both attempts) still cover its evaluations."""
    import shutil

    copy = tmp_path / "demo"
    shutil.copytree(quick_demo, copy)
    for name in ("distilled.png", "curve.png"):
        (copy / "tad" / name).unlink(missing_ok=True)
    damaged = copy / "noisy" / "distilled.pt"
    damaged.write_bytes(damaged.read_bytes()[:2000])
    (copy / "tad" / "buffer" / "experts" / "expert_00001.pt").unlink()
    assert main(["demo", "--quick", "--no-progress", "--out", str(copy)]) == 0
    assert "distilled.pt: not a torch file (no zip archive: a truncated copy" in caplog.text
    assert "distilling again" in caplog.text
    err = capsys.readouterr().err
    assert f"resuming {copy / 'tad' / 'buffer'}: 1 of 2 experts already trained" in err
    assert f"resuming the distillation from {copy / 'noisy' / 'distill_checkpoint.pt'}" in err
    again = torch.load(damaged, weights_only=True)
    assert torch.equal(again["images"], torch.load(quick_demo / "noisy" / "distilled.pt", weights_only=True)["images"])
    for arm in ("noisy", "tad"):
        distill = json.loads((copy / arm / "result_demo.json").read_text())["stages"]["distill"]
        assert distill["loop_seconds"] > sum(e["seconds"] for e in distill["evaluations"]) > 0
    if importlib.util.find_spec("matplotlib"):
        assert all((copy / "tad" / name).read_bytes()[:4] == b"\x89PNG" for name in ("distilled.png", "curve.png"))


def test_export_command(quick_demo, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("")
    assert main(["export", "--buffer", str(quick_demo / "tad" / "buffer"), "--to", str(tmp_path / "notes.txt")]) == 2
    assert "--to " in capsys.readouterr().err and not list(tmp_path.glob("replay_buffer_*"))
    assert main(["export", "--buffer", str(quick_demo / "tad" / "buffer"), "--to", str(tmp_path)]) == 0
    buf = torch.load(tmp_path / "replay_buffer_0.pt", weights_only=True)
    assert len(buf) == 2 and len(buf[0]) == 6 and isinstance(buf[0][0], list)


def test_flags_and_config_merge(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data:\n  dataset: cifar10\n  noise: symmetric\n  noise_rate: 0.2\nbuffer:\n  epochs: 30\n")
    args = build_parser().parse_args(["run", "--config", str(cfg_file), "--noise-rate", "0.4", "--no-tad",
                                      "--ipc", "50", "--set", "buffer.epochs=45", "--device", "cpu"])
    cfg = config_from_args(args)
    assert cfg.data.dataset == "cifar10" and cfg.data.noise == "symmetric"
    assert cfg.data.noise_rate == 0.4          # flag beats YAML
    assert cfg.buffer.epochs == 45             # --set beats YAML
    assert cfg.tad.enabled is False and cfg.device == "cpu"
    assert cfg.distill.ipc == 50 and cfg.distill.max_start_epoch == 40  # MTT's CIFAR-10 IPC50 row
    assert cfg.distill.lr_img == 1000.0 and cfg.data.zca is False
    assert cfg.buffer.lr == 0.01 and cfg.buffer.num_experts == 100     # MTT buffer defaults


def test_cifar_n_flags():
    args = build_parser().parse_args(["buffer", "--cifar-n", "x.pt", "--label-set", "aggre_label", "--tad"])
    cfg = config_from_args(args)
    assert cfg.data.cifar_n == "x.pt" and cfg.data.label_set == "aggre_label" and cfg.tad.enabled


@pytest.mark.parametrize("argv, message", [
    (["run", "--set", "buffer.epoch=3"], "unknown config key 'buffer.epoch'"),
    (["run", "--dataset", "no/such/place", "--out", "{tmp}"], "unknown dataset"),
    (["distill", "--buffer", "{tmp}/none", "--out", "{tmp}"], "not a trajectory store (no manifest.json); train "
     "the experts first: `tad buffer --out DIR` trains them into DIR/buffer"),
    (["distill", "--out", "{tmp}/r"], "r/buffer is not a trajectory store (no manifest.json); train the experts "
     "first: `tad buffer --out {tmp}/r` trains them there"),
    (["eval", "--synthetic", "{tmp}/none.pt", "--out", "{tmp}"], "run `tad distill` first"),
    (["run", "--noise", "symmetric", "--cifar-n", "x.pt"], "not both"),
    (["demo", "--tad"], "drop --tad/--no-tad"),
])
def test_bad_input_exits_with_a_clear_message(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err and err.startswith(f"tad {argv[0]}: error:")


def test_a_class_without_training_images_is_refused_before_noise_fills_it(tmp_path, capsys):
    from tad_plugin.data import ImageDataset, load_dataset, save_arrays

    ds = load_dataset("digits")
    keep = ds.train_labels != 3
    save_arrays(ImageDataset("no3", ds.train_images[keep], ds.train_labels[keep], ds.test_images, ds.test_labels,
                             ds.class_names), tmp_path / "no3.npz")
    argv = ["run", "--dataset", str(tmp_path / "no3.npz"), "--noise", "symmetric", "--noise-rate", "0.4",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "class(es) '3' have no training images (of 10 named classes; the largest training label, 9, has" \
        in capsys.readouterr().err
    assert not (tmp_path / "run" / "labels.pt").exists()


def test_blank_images_are_refused_before_a_run_folder_is_written(tmp_path, capsys):
    import numpy as np

    from tad_plugin.data import load_dataset

    ds = load_dataset("digits")
    train = np.repeat(ds.train_images.permute(0, 2, 3, 1).numpy(), 3, axis=3)  # as RGB
    train[..., 1] = 0  # a wrongly converted file: its green channel empty
    np.savez(tmp_path / "blank.npz", train_images=train, train_labels=ds.train_labels.numpy(),
             test_images=np.repeat(ds.test_images.permute(0, 2, 3, 1).numpy(), 3, axis=3),
             test_labels=ds.test_labels.numpy())
    for argv in (["run", "--out", str(tmp_path / "run")],
                 ["features", "train", "--out", str(tmp_path / "run" / "x.pt")]):
        assert main([*argv, "--dataset", str(tmp_path / "blank.npz")]) == 2
        err = capsys.readouterr().err
        assert "blank: channel 1 of the training images is constant (every value 0); the images are blank" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("stray, message", [
    (12, "class(es) '10', '11' have no training images (of 13 named classes; the largest training label, 12, has "
         "1 sample(s): a stray label?)"),
    (10 ** 8, "train_labels hold the label 100000000, so 100000001 classes for 1293 training images; a stray label?"),
])
def test_a_stray_label_is_named_and_refused_quickly(tmp_path, capsys, stray, message):
    # a huge one once made 10^8 class names and an error listing each of them
    import numpy as np

    from tad_plugin.data import load_dataset

    ds = load_dataset("digits")
    labels = ds.train_labels.numpy().copy()
    labels[0] = stray
    np.savez(tmp_path / "stray.npz", train_images=ds.train_images.permute(0, 2, 3, 1).numpy(), train_labels=labels,
             test_images=ds.test_images.permute(0, 2, 3, 1).numpy(), test_labels=ds.test_labels.numpy())
    assert main(["run", "--dataset", str(tmp_path / "stray.npz"), "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("buffer", "distill", "eval", "run", "demo", "export", "plot", "features"):
        assert cmd in out


@pytest.mark.parametrize("path", sorted([*(ROOT / "examples" / "configs").glob("*.yaml"),
                                          *(ROOT / "tad_plugin" / "configs").glob("*.yaml")]),
                         ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    cfg = config_from_args(build_parser().parse_args(["run", "--config", str(path)]))
    assert cfg.data.dataset in ("digits", "cifar10", "cifar100", "tinyimagenet")


def test_prepare_data_asymmetric_cifar100_flips_within_superclasses(tmp_path):
    from tad_plugin.cli import prepare_data
    from tad_plugin.data import ImageDataset, save_arrays
    from tad_plugin.engine.config import DataConfig
    from tad_plugin.noise import CIFAR100_COARSE

    y = torch.arange(100).repeat(10)
    x = torch.randint(0, 256, (len(y), 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    save_arrays(ImageDataset("c100", x, y, x[:100], y[:100], tuple(map(str, range(100)))), tmp_path / "c100.npz")
    data = prepare_data(DataConfig(dataset=str(tmp_path / "c100.npz"), noise="asymmetric-cifar100", noise_rate=0.4),
                        out=tmp_path)
    assert abs(data.noise_rate - 0.4) < 0.01
    coarse = torch.tensor(CIFAR100_COARSE)
    assert torch.equal(coarse[data.labels], coarse[y])  # every flip stays in the super-class
    assert torch.equal(torch.load(tmp_path / "labels.pt", weights_only=True)["labels"], data.labels)
    with pytest.raises(ValueError, match="needs CIFAR-100's 100 classes"):
        prepare_data(DataConfig(dataset="digits", noise="asymmetric-cifar100", noise_rate=0.4))


def test_diverging_experts_exit_with_a_clear_message(tmp_path, capsys):
    argv = ["buffer", "--config", str(ROOT / "tad_plugin" / "configs" / "demo.yaml"), "--out", str(tmp_path),
            "--no-progress", "--set", "buffer.lr=1e30", "--set", "buffer.num_experts=1", "--epochs", "2",
            "--set", "distill.max_start_epoch=1", "--set", "distill.expert_epochs=1", "--set", "tad.inner_loop=false"]
    assert main(argv) == 2
    assert "diverged" in capsys.readouterr().err


def test_run_records_name_the_commit_git_or_the_one_set_explicitly(tmp_path, monkeypatch):
    from tad_plugin.engine.runlog import git_commit

    monkeypatch.delenv("TAD_PLUGIN_COMMIT", raising=False)
    assert git_commit(tmp_path) is None  # not a git checkout: nothing to name
    inside = git_commit()
    assert inside is not None and len(inside.removesuffix("-dirty")) == 40  # inside the checkout git answers
    monkeypatch.setenv("TAD_PLUGIN_COMMIT", "abc123")
    assert git_commit(tmp_path) == "abc123"
    # set explicitly, it wins over git: a copied checkout's .git can name an older commit than its files
    assert git_commit() == "abc123"


def test_a_run_states_its_main_settings_first():
    from tad_plugin.runs import settings_hint, settings_line

    cfg = config_from_args(build_parser().parse_args(
        ["run", "--config", str(ROOT / "examples/configs/cifar10_sym40_ipc10.yaml"), "--dataset", "/data/cifar10.npz"]))
    line = settings_line(cfg)
    assert line.startswith("MTT on /data/cifar10.npz, 40% symmetric noise (seed 0): IPC 10, ZCA on, 100 experts x "
                           "50 epochs (sgd), 5000 iterations")
    assert "TAD on" in line and "lr_img 100" in line
    assert settings_hint(cfg) is None  # symmetric noise: nothing to suggest
    real = config_from_args(build_parser().parse_args(
        ["run", "--config", str(ROOT / "examples/configs/cifar10n_worst_ipc10.yaml"), "--dataset", "/data/c.npz",
         "--cifar-n", "/data/CIFAR-10_human.pt"]))
    assert settings_line(real).startswith("MTT on /data/c.npz, labels worse_label of CIFAR-10_human.pt: IPC 10")
    clean = config_from_args(build_parser().parse_args(["run", "--dataset", "digits"]))
    assert settings_line(clean).startswith("MTT on digits, labels as loaded: ")


def test_an_asymmetric_tad_run_without_the_remedies_gets_a_hint():
    from tad_plugin.runs import settings_hint

    def cfg(*extra):
        argv = ["run", "--dataset", "digits", "--noise", "asymmetric-cifar10", "--noise-rate", "0.4", *extra]
        return config_from_args(build_parser().parse_args(argv))
    assert "tad.balance_classes=true" in settings_hint(cfg())
    assert settings_hint(cfg("--no-tad")) is None
    assert settings_hint(cfg("--set", "tad.balance_classes=true", "--set", "tad.warmup_confidence_penalty=1")) is None
    asym = config_from_args(build_parser().parse_args(
        ["run", "--config", str(ROOT / "examples/configs/cifar10_asym40_ipc10.yaml")]))
    assert settings_hint(asym) is None


def test_command_line_is_retypable():
    from tad_plugin.engine.runlog import command_line

    # python -m puts the module's file path in argv[0]: the record says how to type it again
    assert command_line(["/venv/lib/python3.12/site-packages/tad_plugin/cli.py", "run", "--out", "a b"]) == \
        "python -m tad_plugin.cli run --out 'a b'"
    assert command_line(["/usr/local/bin/tad", "demo"]) == "tad demo"
    assert command_line(["reproduction/reproduce_cifar10.py", "--page"]) == "reproduction/reproduce_cifar10.py --page"


def test_run_record_reports_the_final_trusted_space_at_each_consensus_level():
    from types import SimpleNamespace

    from tad_plugin.runs import trust_stats as _trust_stats

    clean = torch.tensor([0, 1, 2, 0, 1, 2])
    labels = torch.tensor([0, 1, 2, 0, 2, 1])  # the last two are wrong
    votes = torch.tensor([1.0, 2 / 3, 1 / 3, 1.0, 2 / 3, 1.0])  # 3 experts
    stats = _trust_stats((votes, labels), SimpleNamespace(dataset=SimpleNamespace(train_labels=clean, num_classes=3)))
    # votes >= 0.5: samples 0, 1, 3, 4, 5 -> 3 of them correct; recall 3 of the 4 correct samples
    assert stats["trusted_size"] == 5 and stats["trusted_precision"] == pytest.approx(0.6)
    assert stats["clean_recall"] == 0.75
    assert stats["by_vote"]["0.5"] == {k: stats[k] for k in stats["by_vote"]["0.5"]}
    # every expert: samples 0, 3, 5 -> 2 correct; the 2/3 votes (0.667 < 0.75) drop out at 0.75 too
    for level in ("0.75", "1"):
        assert stats["by_vote"][level]["trusted_size"] == 3
        assert stats["by_vote"][level]["trusted_precision"] == pytest.approx(2 / 3)
        assert stats["by_vote"][level]["clean_recall"] == 0.5
    # class by class at 0.5: labelled 1 are samples 1 (right) and 5 (a true 2); labelled 2 is sample 4 (a true 1)
    assert [r["trusted"] for r in stats["per_class"]] == [2, 2, 1]
    assert stats["per_class"][1]["precision"] == 0.5 and stats["per_class"][1]["intruders"] == [[2, 1]]
    assert stats["per_class"][2]["precision"] == 0.0 and stats["per_class"][2]["clean_recall"] == 0.0
    # the dataset's own labels (no noise applied, no truth): sizes only, no made-up precision
    blind = _trust_stats((votes, labels), SimpleNamespace(dataset=SimpleNamespace(train_labels=clean, num_classes=3)),
                         clean_known=False)
    assert blind == {"trusted_size": 5, "trusted_fraction": 5 / 6,
                     "by_vote": {"0.5": {"trusted_size": 5, "trusted_fraction": 5 / 6},
                                 "0.75": {"trusted_size": 3, "trusted_fraction": 0.5},
                                 "1": {"trusted_size": 3, "trusted_fraction": 0.5}}}


def test_run_prints_where_the_trusted_space_is_wrong():
    from tad_plugin.runs import trust_summary as _trust_summary

    names = ("zero", "one", "two")
    assert _trust_summary({"test_acc_mean": 0.5}, names) is None  # no TAD
    assert _trust_summary({"trusted_size": 4, "trusted_fraction": 0.4}, names) == \
        "final trusted space (trusted by >= half of the experts): 4 samples (40.0%)"
    per_class = [{"class": 0, "trusted": 2, "precision": 1.0, "clean_recall": 1.0, "intruders": []},
                 {"class": 1, "trusted": 2, "precision": 0.5, "clean_recall": 1.0, "intruders": [[2, 1]]},
                 {"class": 2, "trusted": 0, "precision": None, "clean_recall": 0.0, "intruders": []}]
    text = _trust_summary({"trusted_size": 4, "trusted_fraction": 0.4, "trusted_precision": 0.75,
                           "clean_recall": 0.6, "per_class": per_class}, names)
    assert text.splitlines() == [
        "final trusted space (trusted by >= half of the experts): 4 samples (40.0%), precision 75.0%, recall 60.0%",
        "  class one: 2 trusted, 50.0% right (others: 1 of two)",
        "  class zero: 2 trusted, 100.0% right (others: none)",
        "  least recalled: two 0.0%, zero 100.0%, one 100.0% of their correctly labelled samples trusted"]
    later = {"rounds": 12, "recalled": 800, "accuracy": 0.78, "agree": 500, "agree_accuracy": 0.9, "disagree": 300,
             "disagree_accuracy": 0.58}
    text = _trust_summary({"trusted_size": 4, "trusted_fraction": 0.4, "trusted_precision": 0.75,
                           "clean_recall": 0.6, "later_recalls": later}, names)
    assert text.splitlines()[-1] == ("  recalls after the first round (first expert, 12 rounds): 800, 78.0% right; "
                                     "where the expert predicts the pseudo-label 500 (90.0% right), "
                                     "where it does not 300 (58.0% right)")


def test_the_distill_record_keeps_the_unstable_matching_losses():
    from tad_plugin.engine.matching import DistillResult
    from tad_plugin.runs import record_distill as _record_distill

    class Log:
        def stage(self, name, seconds, **info):
            self.info = info

        def result(self, **kw):
            pass

    history = [{"iteration": 10, "loss": 0.9, "syn_lr": 0.01}, {"iteration": 20, "loss": 3.3, "syn_lr": 0.07},
               {"iteration": 20, "syn_lr": 0.07, "eval": {"mean": 0.2, "std": 0.0}}, {"iteration": 30, "loss": 1.2}]
    log = Log()
    _record_distill(log, DistillResult(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.int64), 0.07,
                                       history=history), 1.0)
    assert log.info["max_matching_loss"] == 3.3 and log.info["unstable_loss_iterations"] == [20]
    assert log.info["evaluations"] == [{"iteration": 20, "syn_lr": 0.07, "mean": 0.2, "std": 0.0}]


def test_eval_best_evaluates_the_kept_best_set(quick_demo, tmp_path, capsys):
    from tad_plugin.cli import QUICK_DEMO_OVERRIDES
    from tad_plugin.engine.config import merge
    from tad_plugin.engine.pipeline import load_distilled

    distilled = quick_demo / "tad" / "distilled.pt"
    result, _ = load_distilled(distilled)
    assert result.best_set is not None and result.best_set["images"].shape == result.images.shape
    cfg_file = tmp_path / "quick.yaml"
    cfg_file.write_text(yaml.safe_dump(merge(DEMO_CONFIG, QUICK_DEMO_OVERRIDES)))
    assert main(["eval", "--config", str(cfg_file), "--synthetic", str(distilled), "--best", "--out",
                 str(tmp_path / "ev"), "--no-progress"]) == 0
    record = json.loads((tmp_path / "ev" / "result_eval.json").read_text())
    assert record["results"]["evaluated_set"].startswith(f"best of distillation (iteration {result.best['iteration']}")
    assert 0.0 <= record["results"]["test_acc_mean"] <= 1.0
    assert record["results"]["evaluated_set_ipc"] == QUICK_DEMO_OVERRIDES["distill"]["ipc"]  # the set's own
    raw = torch.load(distilled, weights_only=True)
    raw.pop("best_set")
    torch.save(raw, tmp_path / "no_best.pt")
    assert main(["eval", "--config", str(cfg_file), "--synthetic", str(tmp_path / "no_best.pt"), "--best", "--out",
                 str(tmp_path / "ev2"), "--no-progress"]) == 2
    assert "has no best snapshot" in capsys.readouterr().err and not (tmp_path / "ev2").exists()


def test_best_line_only_when_the_best_came_before_the_end(tmp_path):
    from tad_plugin.runs import best_line

    res = {"best_iteration": 750, "test_acc_best_mean": 0.58, "test_acc_best_std": 0.006, "best_of": "images"}
    line = best_line(res, 1000, tmp_path / "distilled.pt")
    assert line.startswith("best during distillation: 58.00 +- 0.60 % at iteration 750 (images)")
    assert str(tmp_path / "distilled.pt") in line and "tad eval --best" in line
    assert best_line({**res, "best_iteration": 1000}, 1000, tmp_path / "d.pt") is None
    assert best_line({}, 1000, tmp_path / "d.pt") is None


def test_method_adapter_names_a_shadowing_checkout(monkeypatch):
    """A source checkout on sys.path hides tad_plugin.adapters from a non-editable install: the error names the
    cause and the fix; a missing module of the adapter's own (a real import error) is left as it is."""
    from tad_plugin import runs
    from tad_plugin.engine.config import ConfigError

    def missing(name):
        raise ModuleNotFoundError(f"No module named {missing.module!r}", name=missing.module)

    monkeypatch.setattr(runs.importlib.metadata.EntryPoint, "load", lambda self: missing(self.value))
    missing.module = "tad_plugin.adapters"
    with pytest.raises(ConfigError, match=r"adapters is missing .*pip install -e \."):
        runs.method_adapter("mtt")
    missing.module = "kornia"
    with pytest.raises(ModuleNotFoundError, match="kornia"):
        runs.method_adapter("mtt")


def test_out_of_gpu_memory_names_the_settings_that_lower_it(monkeypatch, capsys):
    from tad_plugin import runs

    def oom(args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 5.00 GiB.\nmore detail")

    monkeypatch.setitem(runs.COMMANDS, "eval", oom)
    assert main(["eval"]) == 2
    err = capsys.readouterr().err
    assert "tad eval: error: out of GPU memory (CUDA out of memory. Tried to allocate 5.00 GiB.)" in err
    assert "buffer.experts_per_group" in err and "distill.recompute_steps=true" in err and "more detail" not in err


def test_no_cpp_compiler_for_torch_compile_names_the_uncompiled_settings(monkeypatch, capsys):
    """torch.compile on the CPU builds C++: without a compiler, one line with the fix, not inductor's traceback."""
    import torch._inductor.config as inductor_config

    from tad_plugin import runs

    def compiles(args):
        return torch.compile(lambda x: (x * 3).cos(), dynamic=False)(torch.randn(5)) is None

    monkeypatch.setitem(runs.COMMANDS, "eval", compiles)
    torch._dynamo.reset()
    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/g++")}):  # restored after, unlike a monkeypatch
        assert main(["eval"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tad eval: error: torch.compile found no working C++ compiler") and err.count("\n") == 1
    assert "--set distill.inner_grad=explicit --set buffer.compile=false --set eval.compile=false" in err
    torch._dynamo.reset()


def test_a_tad_run_without_its_extractor_stops_at_once_with_the_command_that_makes_it(tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.setenv("TAD_PLUGIN_FEATURES", str(tmp_path / "features"))
    code = main(["run", "--config", str(ROOT / "tad_plugin" / "configs" / "demo.yaml"), "--set", "tad.features=null",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert not (tmp_path / "run").exists()  # refused before anything was trained or written
    assert f"tad features train --dataset digits --out {tmp_path / 'features' / 'digits.pt'}" in err
