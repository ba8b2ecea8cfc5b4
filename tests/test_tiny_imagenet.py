"""Tiny ImageNet: the tiny-imagenet-200 tree through load_dataset, packing into parts and back, the method tables'
rows, ConvNet-D4, the SimCLR extractor at 64 x 64 and the refused asymmetric noise. Generated trees in the official
layout always; the real tree when TAD_TINY_IMAGENET points at it."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tad_plugin.adapters.att import att_defaults
from tad_plugin.adapters.datm import datm_defaults
from tad_plugin.adapters.ftd import ftd_defaults
from tad_plugin.adapters.mtt import mtt_defaults
from tad_plugin.cli import build_parser, config_from_args, main
from tad_plugin.data import DatasetError, ImageDataset, list_image_folder, load_dataset
from tad_plugin.engine.convnet import ConvNetConfig
from tad_plugin.engine.pipeline import dataset_key
from tad_plugin.noise import make_noisy_labels
from tad_plugin.packing import pack_image_folder, unpack

WNIDS = ("n09999999", "n01443537", "n02124075")  # wnids.txt order, unsorted as the real file
SORTED = tuple(sorted(WNIDS))
PER_CLASS = 3
VAL = (("val_0.JPEG", "n02124075"), ("val_1.JPEG", "n09999999"), ("val_2.JPEG", "n01443537"),
       ("val_3.JPEG", "n02124075"))


def _jpeg(path: Path, value: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 40)
    Image.new(mode, (8, 8), color=color).save(path, format="JPEG", quality=95)


@pytest.fixture()
def tree(tmp_path):
    """A tiny-imagenet-200 tree in the official layout: 3 wnids x 3 train JPEGs (one grey), 4 annotated val
    JPEGs, an unlabelled test folder, boxes files, wnids.txt (unsorted) and words.txt."""
    root = tmp_path / "tiny-imagenet-200"
    for c, wnid in enumerate(WNIDS):
        for k in range(PER_CLASS):
            grey = (wnid, k) == ("n02124075", 1)
            _jpeg(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", 20 * c + 60 * k + 10, "L" if grey else "RGB")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(
            "".join(f"{wnid}_{k}.JPEG\t0\t0\t7\t7\n" for k in range(PER_CLASS)))
    for i, (name, _wnid) in enumerate(VAL):
        _jpeg(root / "val" / "images" / name, 200 - 30 * i)
    (root / "val" / "val_annotations.txt").write_text("".join(f"{n}\t{w}\t0\t0\t7\t7\n" for n, w in VAL))
    _jpeg(root / "test" / "images" / "test_0.JPEG", 5)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tsomething {w}\n" for w in WNIDS))
    return root


def test_the_tree_loads_in_sorted_wnid_order_with_grey_as_rgb_and_annotated_val_labels(tree):
    ds = load_dataset(tree)
    assert ds.name == "tiny-imagenet-200" and ds.class_names == SORTED
    assert ds.train_images.shape == (9, 3, 8, 8) and ds.test_images.shape == (4, 3, 8, 8)
    assert ds.class_counts().tolist() == [PER_CLASS] * 3
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.test_labels.tolist() == [SORTED.index(w) for _, w in VAL]  # annotation order, its wnids
    # image k of a class is the k-th file (sorted by name): its generated value survives JPEG to a few levels
    first = ds.train_images[3].float()  # n02124075_0 = WNIDS[2], k = 0: value 50
    assert abs(first[0].mean().item() - 50) < 4 and abs(first[1].mean().item() - 205) < 4
    grey = ds.train_images[4]  # n02124075_1, saved as mode L
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert abs(grey[0].float().mean().item() - 110) < 4
    assert not torch.equal(ds.train_images[3][0], ds.train_images[3][1])  # RGB stays RGB
    index = list_image_folder(tree)
    assert all("test" not in p.parts for p, _ in index.train + index.test)  # the unlabelled split is not read


def test_the_name_tinyimagenet_finds_the_arrays_file_else_the_tree_under_root(tree, tmp_path):
    with pytest.raises(DatasetError, match="tinyimagenet: neither .*tinyimagenet.npz nor .*tad data unpack"):
        load_dataset("tinyimagenet", root=tmp_path / "empty")
    assert load_dataset("tiny-imagenet", root=tree.parent).name == "tiny-imagenet-200"  # the tree
    manifest = pack_image_folder(tree, tmp_path / "parts", progress=False)
    unpack(manifest, tree.parent / "tinyimagenet.npz", progress=False)
    ds = load_dataset("tinyimagenet", root=tree.parent)
    assert ds.name == "tinyimagenet" and ds.class_names == SORTED  # the arrays file wins over the tree


def test_a_broken_tree_gets_a_one_line_error_naming_the_file(tree):
    (tree / "wnids.txt").write_text("\n".join(WNIDS + ("n00000001",)) + "\n")
    with pytest.raises(DatasetError, match="wnids.txt lists 4 classes .* 3 class folders; missing folders: n00000001"):
        load_dataset(tree)
    (tree / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (tree / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(DatasetError, match=r"val_2.JPEG \(listed in .*val_annotations.txt line 3\) is missing"):
        load_dataset(tree)
    ann = tree / "val" / "val_annotations.txt"
    ann.write_text("val_0.JPEG\tn05555555\t0\t0\t7\t7\n")
    with pytest.raises(DatasetError, match="line 1 labels val_0.JPEG with 'n05555555'"):
        load_dataset(tree)
    ann.write_text("val_0.JPEG n02124075\n")
    with pytest.raises(DatasetError, match="line 1 is not"):
        load_dataset(tree)
    ann.write_text("".join(f"{n}\t{w}\n" for n, w in VAL[:2]))
    (tree / "train" / "n01443537" / "images" / "n01443537_1.JPEG").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DatasetError, match="cannot decode image .*n01443537_1.JPEG"):
        load_dataset(tree)


def test_pack_and_unpack_round_trip_through_parts(tree, tmp_path):
    manifest = pack_image_folder(tree, tmp_path / "parts", part_mib=1500 / 2**20, progress=False)
    m = json.loads(manifest.read_text())
    assert manifest.name == "tiny-imagenet-200.parts.json" and len(m["parts"]) >= 3
    assert all(p["bytes"] <= 1500 for p in m["parts"]) and sum(p["bytes"] for p in m["parts"]) == m["bytes"]
    assert (m["classes"], m["train_images"], m["test_images"]) == (3, 9, 4)
    direct = load_dataset(tree)
    decoded = unpack(manifest, tmp_path / "out" / "tinyimagenet.npz", progress=False)
    for got in (decoded, load_dataset(tmp_path / "out" / "tinyimagenet.npz")):
        for k in ("train_images", "train_labels", "test_images", "test_labels"):
            assert torch.equal(getattr(got, k), getattr(direct, k)), k
        assert got.class_names == SORTED
    assert unpack(manifest, tmp_path / "enc.npz", encoded=True, progress=False) is None
    encoded = load_dataset(tmp_path / "enc.npz")  # the loader decodes an encoded arrays file itself
    assert torch.equal(encoded.train_images, direct.train_images) and encoded.class_names == SORTED
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tinyimagenet.npz"]  # no temporary left


def test_pack_names_an_image_that_would_not_decode_before_writing_a_part(tree, tmp_path, monkeypatch):
    bad = tree / "train" / "n02124075" / "images" / "n02124075_2.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])  # cut short: the unpacking machine could not decode it
    with pytest.raises(DatasetError, match="cannot decode image .*n02124075_2.JPEG"):
        pack_image_folder(tree, tmp_path / "parts", progress=False)
    _jpeg(bad, 7)
    Image.new("RGB", (9, 9)).save(tree / "train" / "n09999999" / "images" / "n09999999_2.JPEG", format="JPEG")
    monkeypatch.setattr("tad_plugin.packing._CHECK_CHUNK", 2)  # the odd (last) image alone in a later chunk
    with pytest.raises(DatasetError, match="n09999999_2.JPEG is 9x9 but the first image is 8x8"):
        pack_image_folder(tree, tmp_path / "parts", progress=False)
    (tree / "train" / "n09999999" / "images" / "n09999999_2.JPEG").unlink()
    for name, _ in VAL:  # validation images of another size than the training images
        Image.new("RGB", (9, 9)).save(tree / "val" / "images" / name, format="JPEG")
    with pytest.raises(DatasetError, match=f"{VAL[0][0]} is 9x9 but the first image is 8x8"):
        pack_image_folder(tree, tmp_path / "parts", progress=False)
    assert not (tmp_path / "parts").exists()


def test_a_missing_truncated_or_altered_part_is_named(tree, tmp_path):
    manifest = pack_image_folder(tree, tmp_path / "parts", part_mib=1500 / 2**20, progress=False)
    parts = sorted((tmp_path / "parts").glob("*.part*"))
    out = tmp_path / "x.npz"
    good = parts[1].read_bytes()
    parts[1].write_bytes(good[:-10])
    with pytest.raises(DatasetError, match=r"part .*part001 has \d+ bytes but the manifest says \d+ .*truncated"):
        unpack(manifest, out, progress=False)
    parts[1].write_bytes(bytes([good[0] ^ 1]) + good[1:])
    with pytest.raises(DatasetError, match="part .*part001 does not match its SHA-256"):
        unpack(manifest, out, progress=False)
    parts[1].unlink()
    with pytest.raises(FileNotFoundError, match=r"part .*part001 is missing \(\d+ parts listed"):
        unpack(manifest, out, progress=False)
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="manifest .* does not exist"):
        unpack(tmp_path / "nothing.parts.json", out, progress=False)


def test_an_edited_manifest_or_an_output_path_under_a_file_is_named_before_any_work(tree, tmp_path):
    manifest = pack_image_folder(tree, tmp_path / "parts", part_mib=1500 / 2**20, progress=False)
    good = json.loads(manifest.read_text())
    for edit, named in ((lambda m: m["parts"][0].pop("file"), r"parts\[0\].file"),
                        (lambda m: m.pop("parts"), "parts"),
                        (lambda m: m["parts"][1].update(bytes=str(m["parts"][1]["bytes"])), r"parts\[1\].bytes")):
        m = json.loads(json.dumps(good))
        edit(m)
        manifest.write_text(json.dumps(m))
        with pytest.raises(DatasetError, match=f"{named}.* missing or of the wrong type .*copy it again"):
            unpack(manifest, tmp_path / "x.npz", progress=False)
    manifest.write_text(json.dumps(good))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    with pytest.raises(ValueError, match=r"notes.txt is a file, not a folder; give a path under a folder"):
        unpack(manifest, a_file / "x.npz", progress=False)
    with pytest.raises(ValueError, match="the output folder .*notes.txt is a file, not a folder"):
        pack_image_folder(tree, a_file, progress=False)


def test_tad_data_pack_and_unpack_commands(tree, tmp_path, capsys):
    assert main(["data", "pack", str(tree), str(tmp_path / "p"), "--part-mib", "0.002", "--no-progress"]) == 0
    assert "9 train and 4 test images of 3 classes" in capsys.readouterr().out
    out = tmp_path / "tinyimagenet.npz"
    assert main(["data", "unpack", str(tmp_path / "p" / "tiny-imagenet-200.parts.json"), str(out),
                 "--no-progress"]) == 0
    assert "9 train and 4 test images, 8x8 RGB, 3 classes" in capsys.readouterr().out
    assert load_dataset(out).class_names == SORTED
    (tmp_path / "p" / "tiny-imagenet-200.npz.part000").unlink()
    assert main(["data", "unpack", str(tmp_path / "p" / "tiny-imagenet-200.parts.json"), str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "part000 is missing" in err and "copy it again" in err and len(err.strip().splitlines()) == 1


def test_tiny_imagenet_rows_convnet_d4_and_names():
    for name in ("tiny-imagenet-200", "/root/data/tiny-imagenet-200/", "/root/tiny/tinyimagenet.npz", "Tiny"):
        assert dataset_key(name) == "tinyimagenet", name
    m = mtt_defaults("/root/tiny/tinyimagenet.npz", 10)
    assert (m["distill"]["syn_steps"], m["distill"]["max_start_epoch"], m["distill"]["lr_img"],
            m["distill"]["batch_syn"], m["data"]["zca"]) == (20, 40, 1e4, 200, False)
    assert mtt_defaults("tinyimagenet", 50)["distill"]["batch_syn"] == 300
    assert ftd_defaults("tinyimagenet", 10)["buffer"]["alpha"] == 1.0
    assert ftd_defaults("tinyimagenet", 50)["distill"]["batch_syn"] == 500  # no IPC-50 row: the IPC-10 one
    assert att_defaults("tinyimagenet", 10)["distill"]["iterations"] == 80000
    d = datm_defaults("tinyimagenet", 10)
    assert d["data"]["zca"] is True and (d["distill"]["min_start_epoch"], d["distill"]["max_start_epoch"]) == (10, 50)
    assert mtt_defaults("my-images", 10)["data"]["zca"] is False  # an unlisted dataset: CIFAR-10's row, no ZCA
    ds = ImageDataset("t", torch.zeros(2, 3, 64, 64, dtype=torch.uint8), torch.tensor([0, 1]),
                      torch.zeros(1, 3, 64, 64, dtype=torch.uint8), torch.tensor([1]),
                      tuple(f"n{i}" for i in range(200)))
    cfg = ConvNetConfig.for_dataset(ds)
    assert cfg.depth == 4 and cfg.pools == (True,) * 4  # 64 -> 32 -> 16 -> 8 -> 4


@pytest.mark.parametrize(("method", "syn_steps", "batch_syn"), [("mtt", 20, 200), ("datm", 40, 500)])
def test_the_example_configs_are_valid_reduced_runs_of_their_methods_rows(method, syn_steps, batch_syn):
    path = Path(__file__).parents[1] / "examples" / "configs" / f"{method}_tiny_sym40_ipc10.yaml"
    cfg = config_from_args(build_parser().parse_args(["run", "--config", str(path)]))  # as `tad run --config`
    assert cfg.method == method and cfg.distill.ipc == 10 and cfg.data.noise == "symmetric"
    assert cfg.data.noise_rate == 0.4 and cfg.distill.syn_steps == syn_steps and cfg.distill.batch_syn == batch_syn
    assert cfg.distill.min_start_epoch < cfg.distill.max_start_epoch
    assert cfg.distill.max_start_epoch + cfg.distill.expert_epochs <= cfg.buffer.epochs < 50
    assert cfg.tad.enabled and cfg.buffer.num_experts == 5 and cfg.distill.iterations == 300
    assert cfg.data.zca is (method == "datm")  # each method's own Tiny ImageNet preprocessing


def test_asymmetric_noise_is_refused_for_200_classes():
    labels = torch.arange(200).repeat(10)
    for kind in ("asymmetric-cifar10", "asymmetric-cifar100"):
        with pytest.raises(ValueError, match=f"{kind} noise needs 1?0?0 classes, got 200: .*use symmetric noise"):
            make_noisy_labels(labels, kind, 0.4, num_classes=200, seed=0, coarse_labels=labels // 5)
    noisy = make_noisy_labels(labels, "symmetric", 0.4, num_classes=200, seed=0)
    assert (noisy != labels).double().mean().item() == pytest.approx(0.4)  # 4 of each class's 10


def test_simclr_extractor_trains_and_embeds_64px_rgb(tmp_path):
    from tad_plugin.features.extractor import load_extractor
    from tad_plugin.features.train import TrainConfig, train_simclr

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=g)
    ds = ImageDataset("tiny64", images, torch.arange(4) % 2, images[:2], torch.arange(2), ("a", "b"))
    config = TrainConfig(epochs=1, batch_size=4, hidden_dim=16, out_dim=8, eval_every=1, knn_ks=(1,),
                         checkpoint_every=1, warmup_epochs=0, compile=False, amp=False)
    result = train_simclr(ds, config, "cpu", checkpoint=tmp_path / "x.pt", progress=False)
    assert result.epochs == 1 and all(np.isfinite(v) for v in result.knn.values())
    extractor = load_extractor(tmp_path / "x.pt")
    assert tuple(extractor.input_size) == (64, 64)
    assert extractor.embed(images[:3]).shape == (3, 512)


REAL = os.environ.get("TAD_TINY_IMAGENET")


@pytest.mark.skipif(not REAL, reason="set TAD_TINY_IMAGENET=/path/to/tiny-imagenet-200 to check the real tree")
def test_the_real_tree():
    root = Path(REAL)
    wnids = (root / "wnids.txt").read_text().split()
    index = list_image_folder(root)
    assert index.classes == tuple(sorted(wnids)) and len(wnids) == 200
    assert len(index.train) == 100_000 and len(index.test) == 10_000
    ds = load_dataset(root)
    assert ds.train_images.shape == (100_000, 3, 64, 64) and ds.test_images.shape == (10_000, 3, 64, 64)
    assert ds.class_counts().tolist() == [500] * 200
    assert torch.bincount(ds.test_labels, minlength=200).tolist() == [50] * 200
    # every train image sits in its class's folder; val labels are the annotation file's wnids
    assert all(p.parts[-3] == ds.class_names[y] for p, y in index.train)
    ann = dict(line.split("\t")[:2] for line in (root / "val" / "val_annotations.txt").read_text().splitlines())
    assert all(ds.class_names[y] == ann[p.name] for p, y in index.test)
    grey = (ds.train_images[:, 0] == ds.train_images[:, 1]).flatten(1).all(1) & \
        (ds.train_images[:, 1] == ds.train_images[:, 2]).flatten(1).all(1)
    assert 0 < int(grey.sum()) < 5000  # the tree's grey JPEGs, as RGB with three equal channels
