import pytest
import torch

from tad_plugin.trust_report import TrustReport, per_class_trust


def test_rounds_metrics_and_round_trip(tmp_path):
    clean = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    noisy = torch.tensor([0, 1, 2, 1, 1, 0, 0, 1])  # samples 3 and 5 are wrong
    report = TrustReport()
    first = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1], dtype=torch.bool)
    r0 = report.add(epoch=2, stage="division", trusted=first, labels=noisy, noisy_labels=noisy, clean_labels=clean)
    assert (r0.trusted, r0.untrusted) == (5, 3)
    assert r0.precision == pytest.approx(4 / 5) and r0.recall == pytest.approx(4 / 6)
    assert report.noisy_label_accuracy == pytest.approx(6 / 8)
    fixed = noisy.clone()
    fixed[5] = 2  # sample 5 recalled with the right label, sample 3 sieved
    second = torch.tensor([1, 1, 0, 0, 0, 1, 1, 1], dtype=torch.bool)
    r1 = report.add(epoch=2, stage="recalibration", trusted=second, labels=fixed, noisy_labels=noisy,
                    clean_labels=clean, previous_trusted=first)
    assert (r1.recalled, r1.sieved) == (1, 1)
    assert r1.precision == 1.0 and r1.recalled_accuracy == 1.0 and r1.label_accuracy == pytest.approx(7 / 8)
    assert r1.recall == pytest.approx(5 / 7)
    report.save_json(tmp_path / "trust.json")
    back = TrustReport.load_json(tmp_path / "trust.json")
    assert back.rounds == report.rounds and "| 1 | 2 | recalibration | 5 |" in back.table()
    short = back.table(max_rows=1).splitlines()
    assert len(short) == 4 and short[2].startswith("| 0 |") and short[3].startswith("| ... |")
    (tmp_path / "cut.json").write_text((tmp_path / "trust.json").read_text()[:40])
    (tmp_path / "other.json").write_text('{"rounds": [{"round": 0, "colour": "red"}]}')
    for name, problem in (("cut.json", "JSONDecodeError"), ("other.json", "TypeError")):
        with pytest.raises(ValueError, match=f"cannot read trust report .*{name}: {problem}: .*Delete it to go on"):
            TrustReport.load_json(tmp_path / name)
    pytest.importorskip("matplotlib")
    report.plot(tmp_path / "trust.png")
    assert (tmp_path / "trust.png").read_bytes()[:4] == b"\x89PNG"


def test_movements_between_rounds_and_re_recalls():
    labels = torch.zeros(6, dtype=torch.int64)
    report = TrustReport()

    def add(stage, trusted, previous=None):
        mask = torch.tensor(trusted, dtype=torch.bool)
        prev = None if previous is None else torch.tensor(previous, dtype=torch.bool)
        return report.add(epoch=len(report.rounds), stage=stage, trusted=mask, labels=labels, noisy_labels=labels,
                          previous_trusted=prev)

    d0 = add("division", [1, 1, 1, 0, 0, 0])
    assert (d0.admitted, d0.expelled, d0.rerecalled) == (0, 0, 0)  # nothing before the first round
    r1 = add("recalibration", [1, 1, 1, 1, 1, 0], previous=[1, 1, 1, 0, 0, 0])
    assert (r1.recalled, r1.rerecalled, r1.admitted, r1.expelled) == (2, 0, 2, 0)
    d2 = add("division", [1, 1, 0, 1, 0, 0])  # the outer loop expels sample 4 (recalled) and sample 2
    assert (d2.admitted, d2.expelled) == (0, 2)
    r3 = add("recalibration", [1, 1, 0, 1, 1, 1], previous=[1, 1, 0, 1, 0, 0])
    assert (r3.recalled, r3.rerecalled) == (2, 1)  # sample 4 comes back a second time, sample 5 is new


def test_recalls_are_split_by_the_expert_s_agreement():
    clean = torch.tensor([0, 1, 2, 0, 1, 2])
    labels = torch.tensor([0, 1, 2, 1, 2, 2])  # after the round: samples 3 and 4 carry wrong pseudo-labels
    before = torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool)
    after = torch.tensor([1, 1, 1, 1, 1, 1], dtype=torch.bool)  # 2, 3, 4, 5 recalled
    agrees = torch.tensor([1, 1, 1, 0, 1, 1], dtype=torch.bool)  # the expert predicts every label but 3's
    r = TrustReport().add(epoch=3, stage="recalibration", trusted=after, labels=labels, noisy_labels=labels,
                          clean_labels=clean, previous_trusted=before, expert_agrees=agrees)
    assert r.recalled == 4 and r.recalled_expert_agrees == 3  # 2, 4, 5
    assert r.recalled_agree_accuracy == pytest.approx(2 / 3)  # 2 and 5 right, 4 wrong
    assert r.recalled_disagree_accuracy == 0.0  # 3 is wrong
    assert r.recalled_accuracy == pytest.approx(2 / 4)
    plain = TrustReport().add(epoch=3, stage="recalibration", trusted=after, labels=labels, noisy_labels=labels,
                              clean_labels=clean, previous_trusted=before)
    assert plain.recalled_expert_agrees is None and plain.recalled_agree_accuracy is None
    with pytest.raises(ValueError, match="expert_agrees must be bool"):
        TrustReport().add(epoch=3, stage="recalibration", trusted=after, labels=labels, noisy_labels=labels,
                          expert_agrees=agrees[:3])


def test_without_clean_labels_only_sizes():
    report = TrustReport()
    r = report.add(epoch=0, stage="division", trusted=torch.tensor([True, False]), labels=torch.tensor([0, 1]),
                   noisy_labels=torch.tensor([0, 1]))
    assert r.precision is None and "| - |" in report.table()
    with pytest.raises(ValueError, match="no rounds"):
        TrustReport().plot("unused.png")


def test_per_class_trust_finds_where_the_noise_sits():
    # class 1 holds 6 trusted samples labelled 1: 3 true 1s, 2 true 0s, 1 true 2; class 0's two trusted are
    # right; one correctly labelled 0 and one correctly labelled 1 are left out; class 2 has no trusted sample
    clean = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 2, 1, 2])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2])
    trusted = torch.tensor([1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.bool)
    rows = per_class_trust(trusted, labels, clean, num_classes=3)
    assert [r["trusted"] for r in rows] == [2, 6, 0]
    assert rows[0]["precision"] == 1.0 and rows[0]["intruders"] == []
    assert rows[0]["clean_recall"] == pytest.approx(2 / 3)
    assert rows[1]["precision"] == pytest.approx(3 / 6)
    assert rows[1]["clean_recall"] == pytest.approx(3 / 4)
    assert rows[1]["intruders"] == [[0, 2], [2, 1]]
    assert rows[2]["precision"] is None and rows[2]["clean_recall"] == 0.0


def test_per_class_trust_rejects_bad_input():
    with pytest.raises(ValueError, match="one length"):
        per_class_trust(torch.ones(3, dtype=torch.bool), torch.zeros(4, dtype=torch.long),
                        torch.zeros(3, dtype=torch.long), num_classes=2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        per_class_trust(torch.ones(2, dtype=torch.bool), torch.tensor([0, 2]), torch.tensor([0, 1]), num_classes=2)


def test_later_recalls_sum_the_rounds_after_the_first():
    clean = torch.zeros(8, dtype=torch.int64)
    report = TrustReport()
    none = torch.zeros(8, dtype=torch.bool)

    def recal(trusted, labels, agrees):
        prev = report.rounds and torch.tensor(report._last_trusted.tolist())
        return report.add(epoch=len(report.rounds), stage="recalibration",
                          trusted=torch.tensor(trusted, dtype=torch.bool),
                          labels=torch.tensor(labels), noisy_labels=clean, clean_labels=clean,
                          previous_trusted=prev if report.rounds else none,
                          expert_agrees=torch.tensor(agrees, dtype=torch.bool))

    recal([1, 1, 0, 0, 0, 0, 0, 0], [0] * 8, [1] * 8)  # the first round: not counted
    assert report.later_recalls() is None  # one recalibration only
    # 2 right (agree), 3 wrong (not)
    recal([1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0], [1, 1, 1, 0, 1, 1, 1, 1])
    # 4 right (agree), 5 wrong (agree), 6 wrong (not)
    recal([1, 1, 1, 1, 1, 1, 1, 0], [0, 0, 0, 1, 0, 1, 2, 0], [1, 1, 1, 0, 1, 1, 0, 1])
    later = report.later_recalls()
    assert later["rounds"] == 2 and later["recalled"] == 5
    assert later["accuracy"] == pytest.approx(2 / 5)
    assert (later["agree"], later["disagree"]) == (3, 2)
    assert later["agree_accuracy"] == pytest.approx(2 / 3) and later["disagree_accuracy"] == 0.0
    no_truth = TrustReport()
    for _ in range(2):
        no_truth.add(epoch=0, stage="recalibration", trusted=torch.ones(2, dtype=torch.bool),
                     labels=torch.zeros(2, dtype=torch.int64), noisy_labels=torch.zeros(2, dtype=torch.int64),
                     previous_trusted=torch.zeros(2, dtype=torch.bool))
    assert no_truth.later_recalls() is None
