"""benchmarks/benchmark_tad_overhead.py runs end to end on the CPU at a tiny size and writes its record (no timing
is asserted: only that both arms ran and TAD's pieces were measured)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "benchmark_tad_overhead.py"


def test_benchmark_runs_both_arms_on_generated_data(tmp_path):
    out = tmp_path / "overhead.json"
    subprocess.run([sys.executable, str(SCRIPT), "--dataset", "generated", "--device", "cpu", "--experts", "2",
                    "--n", "96", "--width", "8", "--epochs", "3", "--top-k", "5", "--num-neighbors", "5",
                    "--feature-dim", "16", "--repeat", "1", "--out", str(out)], check=True, capture_output=True,
                   timeout=300)
    record = json.loads(out.read_text())
    assert record["settings"]["num_train"] == 96 and record["settings"]["experts"] == 2
    assert record["noisy_epoch_s"] > 0 and record["tad_epoch_s"] > 0
    assert record["ratio"] == pytest.approx(record["tad_epoch_s"] / record["noisy_epoch_s"], rel=5e-3)  # rounding
    phases = record["tad_phases_s"]
    assert all(phases[name] > 0 for name in ("loss pass", "division (filter_dataset x E)", "  of which GMM fit",
                                             "recalibration (recalibrate_experts)"))
    assert set(record["division_alone_s"]) == {"GMM fit, batched", "filter_dataset_batch (E experts)",
                                               "filter_dataset x E (one call per expert)"}
    assert len(record["arms"]["tad"]["epochs_s"]) == 1  # epoch 1 of 3 timed
