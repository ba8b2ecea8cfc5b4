import numpy as np
import pytest
import torch

from tad_plugin.noise import CIFAR10_ASYMMETRIC_MAP, load_cifar_n, make_noisy_labels, noise_rate

CLEAN10 = torch.arange(10).repeat_interleave(500)  # CIFAR-10-like, 500 per class


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_symmetric_flips_exactly_round_rate_per_class_to_other_classes(rate):
    noisy = make_noisy_labels(CLEAN10, "symmetric", rate, num_classes=10, seed=0)
    assert noisy.dtype == torch.int64 and noisy.shape == CLEAN10.shape
    for c in range(10):
        members = CLEAN10 == c
        assert int((noisy[members] != c).sum()) == round(rate * 500)
    assert noise_rate(noisy, CLEAN10) == pytest.approx(rate)
    flipped = noisy[noisy != CLEAN10]
    counts = torch.bincount(flipped, minlength=10).float()
    assert counts.min() > 0.6 * counts.mean()  # targets spread over the other classes


def test_same_seed_same_labels_other_seed_other_labels():
    a = make_noisy_labels(CLEAN10, "symmetric", 0.4, num_classes=10, seed=3)
    assert torch.equal(a, make_noisy_labels(CLEAN10, "symmetric", 0.4, num_classes=10, seed=3))
    assert not torch.equal(a, make_noisy_labels(CLEAN10, "symmetric", 0.4, num_classes=10, seed=4))


def test_asymmetric_cifar10_map_is_the_papers():
    noisy = make_noisy_labels(CLEAN10, "asymmetric-cifar10", 0.4, num_classes=10, seed=0)
    changed = noisy != CLEAN10
    pairs = set(zip(CLEAN10[changed].tolist(), noisy[changed].tolist()))
    assert pairs == set(CIFAR10_ASYMMETRIC_MAP.items()) == {(9, 1), (2, 0), (4, 7), (3, 5)}
    for src in CIFAR10_ASYMMETRIC_MAP:
        assert int(changed[CLEAN10 == src].sum()) == 200
    assert noise_rate(noisy, CLEAN10) == pytest.approx(0.16)


def test_asymmetric_cifar100_next_class_within_superclass():
    fine = torch.arange(100).repeat_interleave(10)
    g = torch.Generator().manual_seed(0)
    coarse_of = torch.randperm(100, generator=g) % 20  # 5 fine classes per super-class, scrambled
    noisy = make_noisy_labels(fine, "asymmetric-cifar100", 0.2, num_classes=100, seed=1,
                              coarse_labels=coarse_of[fine])
    for c in range(100):
        members = fine == c
        assert int((noisy[members] != c).sum()) == 2
        group = sorted(torch.nonzero(coarse_of == coarse_of[c]).flatten().tolist())
        expected = group[(group.index(c) + 1) % len(group)]
        assert set(noisy[members & (noisy != c)].tolist()) == {expected}
    with pytest.raises(ValueError, match="coarse_labels"):
        make_noisy_labels(fine, "asymmetric-cifar100", 0.2, num_classes=100, seed=1)
    # every class its own super-class once flipped nothing in silence; float ids were read as one super-class
    with pytest.raises(ValueError, match=r"100 super-class\(es\) over a single class .* would flip nothing"):
        make_noisy_labels(fine, "asymmetric-cifar100", 0.2, num_classes=100, seed=1, coarse_labels=fine)
    with pytest.raises(ValueError, match="coarse_labels must hold integer super-class ids, got torch.float32"):
        make_noisy_labels(fine, "asymmetric-cifar100", 0.2, num_classes=100, seed=1,
                          coarse_labels=torch.zeros(len(fine)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown noise kind"):
        make_noisy_labels(CLEAN10, "pairflip", 0.2, num_classes=10, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_noisy_labels(CLEAN10, "symmetric", 1.5, num_classes=10, seed=0)
    with pytest.raises(ValueError, match="lie in"):
        make_noisy_labels(CLEAN10, "symmetric", 0.2, num_classes=5, seed=0)
    with pytest.raises(ValueError, match="the noise seed must be an integer >= 0"):
        make_noisy_labels(CLEAN10, "symmetric", 0.2, num_classes=10, seed=-1)
    for rate in ("0.4", None):
        with pytest.raises(ValueError, match="noise rate must be a number in"):
            make_noisy_labels(CLEAN10, "symmetric", rate, num_classes=10, seed=0)
    with pytest.raises(TypeError, match="num_classes must be an integer, got 10.0"):
        make_noisy_labels(CLEAN10, "symmetric", 0.2, num_classes=10.0, seed=0)
    assert torch.equal(make_noisy_labels(CLEAN10, "symmetric", 0.2, num_classes=np.int64(10), seed=np.int64(3)),
                       make_noisy_labels(CLEAN10, "symmetric", 0.2, num_classes=10, seed=3))  # NumPy integers


def test_load_cifar_n_npz_and_pt(tmp_path):
    clean = np.arange(50) % 10
    worse = clean.copy()
    worse[:20] = (worse[:20] + 1) % 10
    np.savez(tmp_path / "n.npz", clean_label=clean, worse_label=worse)
    labels = load_cifar_n(tmp_path / "n.npz", "worse_label")
    assert labels.dtype == torch.int64 and noise_rate(labels, torch.from_numpy(clean)) == pytest.approx(0.4)
    torch.save({"clean_label": clean, "worse_label": worse}, tmp_path / "n.pt")  # the official layout
    assert torch.equal(load_cifar_n(tmp_path / "n.pt", "worse_label"), labels)
    with pytest.raises(KeyError, match="available: clean_label, worse_label"):
        load_cifar_n(tmp_path / "n.pt", "aggre_label")
    with pytest.raises(FileNotFoundError):
        load_cifar_n(tmp_path / "missing.pt", "worse_label")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        load_cifar_n(tmp_path / "bad.pt", "worse_label")
    whole = (tmp_path / "n.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match="cannot read CIFAR-N label file .*cut.npz"):
        load_cifar_n(tmp_path / "cut.npz", "worse_label")
    (tmp_path / "text.npz").write_text("worse_label\n1,2,3\n")  # numpy's own error asked for allow_pickle
    with pytest.raises(ValueError, match=r"text.npz: not an .npz or torch file \(no zip archive"):
        load_cifar_n(tmp_path / "text.npz", "worse_label")
    np.savez(tmp_path / "f.npz", worse_label=worse.astype(np.float32))
    with pytest.raises(ValueError, match="not a 1-D integer label array .*; store one class index per training image"):
        load_cifar_n(tmp_path / "f.npz", "worse_label")


def test_load_cifar_n_refuses_arbitrary_pickles(tmp_path):
    torch.save({"worse_label": np.arange(5), "evil": object()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot read"):
        load_cifar_n(tmp_path / "evil.pt", "worse_label")
