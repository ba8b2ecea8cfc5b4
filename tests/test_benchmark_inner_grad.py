"""benchmarks/benchmark_inner_grad.py takes a dataset's shape: its classes, image size and ConvNet depth, with the
method's table row for the unrolled steps and images per inner step; it runs end to end on the CPU at a tiny size
(no timing is asserted: only what ran and that the routes agree)."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "benchmark_inner_grad.py"


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script(SCRIPT)


def steps(bench, method, shape, ipc, syn_steps=None, batch_syn=None):
    return bench.resolve_steps(argparse.Namespace(method=method, dataset_shape=shape, ipc=ipc, syn_steps=syn_steps,
                                                  batch_syn=batch_syn))


def test_dataset_shape_gives_the_librarys_convnet(bench):
    tiny = bench.convnet_config("tinyimagenet", 128)
    assert (tiny.num_classes, tiny.image_size, tiny.depth, tiny.width) == (200, (64, 64), 4, 128)
    c100 = bench.convnet_config("cifar100", 16)
    assert (c100.num_classes, c100.image_size, c100.depth, c100.width) == (100, (32, 32), 3, 16)


def test_steps_default_to_the_methods_table_row_and_options_override_it(bench):
    assert steps(bench, "mtt", "tinyimagenet", 10) == (20, 200)
    assert steps(bench, "mtt", "tinyimagenet", 50) == (20, 300)
    assert steps(bench, "datm", "tinyimagenet", 10) == (40, 500)
    assert steps(bench, "att", "tinyimagenet", 50) == (20, None)  # no IPC-50 row: the IPC-10 one, all images
    assert steps(bench, "mtt", "cifar10", 10) == (30, None)  # the CIFAR-10 default as before
    assert steps(bench, "datm", "cifar10", 50) == (80, None)  # batch_syn 500 = all 500 images
    assert steps(bench, "mtt", "tinyimagenet", 50, syn_steps=3, batch_syn="all") == (3, None)
    assert steps(bench, "mtt", "tinyimagenet", 50, batch_syn=64) == (20, 64)


def test_bad_batch_syn_is_a_clear_error(bench):
    assert bench.batch_syn_arg("all") == "all" and bench.batch_syn_arg("7") == 7
    for text in ("0", "-3", "many"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive number of images or 'all'"):
            bench.batch_syn_arg(text)


def test_tiny_imagenet_shaped_step_runs_on_the_cpu(tmp_path):
    out = tmp_path / "inner_grad.json"
    subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--dataset-shape", "tinyimagenet", "--ipc", "1",
                    "--width", "4", "--syn-steps", "1", "--batch-syn", "100", "--iterations", "1", "--warmup", "0",
                    "--variants", "autograd,explicit+recompute", "--out", str(out)], check=True, capture_output=True,
                   timeout=300)
    record = json.loads(out.read_text())
    s = record["settings"]
    assert (s["dataset_shape"], s["num_classes"], s["image_size"], s["depth"]) == ("tinyimagenet", 200, [64, 64], 4)
    assert (s["syn_steps"], s["batch_syn"], s["method"]) == (1, 100, "mtt")
    rows = {r["variant"]: r for r in record["rows"]}
    assert set(rows) == {"autograd", "explicit+recompute"}
    assert all("error" not in r and r["iter_s"] > 0 and r["peak_gib"] > 0 for r in rows.values())
    assert rows["autograd"]["labels_checksum"] == sum(range(200))  # one image of each of the 200 classes
    # the two routes compute the same image update
    assert rows["explicit+recompute"]["images_checksum"] == pytest.approx(rows["autograd"]["images_checksum"],
                                                                          rel=1e-6)


def test_variant_modifiers_set_cudnns_algorithm_search_and_the_image_layout_for_that_variant_only(tmp_path, bench):
    assert bench.split_variant("compiled+recompute+channels-last+cudnn-benchmark") == (
        "compiled+recompute", {"+channels-last", "+cudnn-benchmark"})
    with pytest.raises(ValueError, match="unknown variant 'explicit\\+fast'"):
        bench.split_variant("explicit+fast+cudnn-benchmark")
    out = tmp_path / "inner_grad.json"
    subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--ipc", "1", "--width", "4", "--syn-steps", "1",
                    "--iterations", "1", "--warmup", "0", "--variants",
                    "explicit,explicit+cudnn-benchmark,explicit+channels-last", "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    plain, searched, nhwc = json.loads(out.read_text())["rows"]
    assert (plain["variant"], plain["cudnn_benchmark"], plain["channels_last"]) == ("explicit", False, False)
    assert (searched["cudnn_benchmark"], searched["channels_last"], searched["inner_grad"]) == (True, False, "explicit")
    assert (nhwc["cudnn_benchmark"], nhwc["channels_last"]) == (False, True)
    for row in (searched, nhwc):
        assert row["images_checksum"] == pytest.approx(plain["images_checksum"], rel=1e-5)
    bad = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--variants", "explicit+fast"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown variant 'explicit+fast'" in bad.stderr
