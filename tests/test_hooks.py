"""The pluggy contract: specs, the manager, the facade, entry-point plugins, validation."""

import inspect
import re
import textwrap
from pathlib import Path

import pluggy
import pytest
import torch

import tad_plugin
from tad_plugin import HookError, TADHooks, TrustAwareDiversion, get_plugin_manager, hookimpl, hookspecs
from tad_plugin.results import Recalibration, TrustSplit

HOOKS = {"filter_dataset": ["losses", "labels", "num_classes"],
         "filter_dataset_batch": ["losses", "labels", "num_classes"],
         "expert_loss": ["logits", "targets"],
         "recalibrate": ["features", "labels", "trusted", "anchor_features", "anchor_labels", "num_classes"],
         "recalibrate_batch": ["features", "labels", "trusted", "anchor_features", "anchor_labels", "num_classes"]}
NOTIFICATIONS = {"on_division": ["expert", "epoch", "split", "labels", "trusted", "predictions"],
                 "on_recalibration": ["expert", "epoch", "labels", "trusted", "previous_labels", "previous_trusted",
                                      "predictions"]}


def test_specs_are_firstresult_plain_and_documented():
    pm = get_plugin_manager(load_entrypoints=False)
    for name, args in HOOKS.items():
        caller = getattr(pm.hook, name)
        assert caller.spec.opts["firstresult"] is True
        assert list(caller.spec.argnames) == args  # keyword-only params would vanish from argnames
        spec = getattr(hookspecs, name)
        params = inspect.signature(spec).parameters.values()
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params)
        doc = spec.__doc__
        assert "When:" in doc and ":return:" in doc
        for arg in args:
            assert f":param {arg}:" in doc, (name, arg)
    for name, args in NOTIFICATIONS.items():  # reports: every listener is called
        caller = getattr(pm.hook, name)
        assert not caller.spec.opts["firstresult"] and list(caller.spec.argnames) == args
        assert all(f":param {arg}" in getattr(hookspecs, name).__doc__ for arg in args), name
    assert {h for h in dir(pm.hook) if not h.startswith("_")} == set(HOOKS) | set(NOTIFICATIONS)


def test_plugin_guide_documents_every_hook_with_its_exact_arguments():
    guide = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    for name, args in HOOKS.items():
        assert f"{name}({', '.join(args)})" in guide, name


def test_default_plugin_is_registered_as_tad():
    pm = get_plugin_manager(load_entrypoints=False)
    assert isinstance(pm.get_plugin("tad"), TrustAwareDiversion)
    custom = TrustAwareDiversion(reg_weight=0.5)
    assert get_plugin_manager(default=custom, load_entrypoints=False).get_plugin("tad") is custom


def test_hook_filter_dataset_through_facade():
    losses = torch.cat([torch.full((50,), 0.1), torch.full((50,), 3.0)]) + torch.rand(100) * 0.01
    labels = torch.arange(100) % 4
    split = TADHooks(get_plugin_manager(load_entrypoints=False)).filter_dataset(losses, labels, 4)
    assert isinstance(split, TrustSplit)
    assert split.trusted[:50].all() and not split.trusted[50:].any()
    assert split.thresholds.shape == (4,)


def test_hook_expert_loss_through_facade():
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    hooks = TADHooks(get_plugin_manager(default=TrustAwareDiversion(reg_weight=0.0), load_entrypoints=False))
    assert torch.allclose(hooks.expert_loss(logits, targets), torch.nn.functional.cross_entropy(logits, targets))


def test_hook_recalibrate_through_facade():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(3, 8) * 5
    labels = torch.arange(180) % 3  # 45 trusted per class: more than the 30 voters of the default vote
    features = centers[labels] + 0.1 * torch.randn(180, 8, generator=g)
    trusted = torch.arange(180) < 135
    given = torch.where(trusted, labels, (labels + 1) % 3)  # the untrusted 45 carry wrong labels
    anchors = centers.repeat_interleave(4, 0) + 0.1 * torch.randn(12, 8, generator=g)
    out = TADHooks(get_plugin_manager(load_entrypoints=False)).recalibrate(
        features, given, trusted, anchors, torch.arange(3).repeat_interleave(4), 3)
    assert isinstance(out, Recalibration) and out.trusted.all()
    assert torch.equal(out.labels, labels)  # each recalled with its cluster's label, the trusted ones kept


class _Override:
    @hookimpl
    def expert_loss(self, logits, targets):
        return logits.sum() * 0


class _Defer:
    @hookimpl
    def expert_loss(self, logits):
        return None


def test_later_plugin_overrides_tad_and_none_defers():
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(_Override())
    assert float(TADHooks(pm).expert_loss(torch.randn(2, 3), torch.tensor([0, 1]))) == 0.0
    pm2 = get_plugin_manager(load_entrypoints=False)
    pm2.register(_Defer())  # subset of arguments is fine; None falls through to TAD
    assert float(TADHooks(pm2).expert_loss(torch.randn(2, 3), torch.tensor([0, 1]))) > 0


def test_all_deferring_raises_hook_error():
    pm = get_plugin_manager(load_entrypoints=False, blocked=["tad"])
    pm.register(_Defer())
    with pytest.raises(HookError, match="no registered plugin implements 'expert_loss'"):
        TADHooks(pm).expert_loss(torch.randn(2, 3), torch.tensor([0, 1]))


def test_misspelled_hook_and_argument_are_rejected():
    class Misspelled:
        @hookimpl
        def expert_los(self, logits, targets):
            return None

    class WrongArg:
        @hookimpl
        def expert_loss(self, logit, targets):
            return None

    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(Misspelled())
    with pytest.raises(pluggy.PluginValidationError, match="unknown hook 'expert_los'"):
        pm.check_pending()
    with pytest.raises(pluggy.PluginValidationError, match="logit"):
        get_plugin_manager(load_entrypoints=False).register(WrongArg())


@pytest.fixture
def entry_point_plugin(tmp_path, install_distribution):
    """A third-party distribution on sys.path declaring a plugin in the ``tad_plugin`` group."""
    (tmp_path / "fake_tad_ext.py").write_text(textwrap.dedent("""
        from tad_plugin import hookimpl

        @hookimpl
        def expert_loss(logits, targets):
            return logits.new_tensor(42.0)
    """))
    install_distribution("fake-tad-ext", "[tad_plugin]\nfake = fake_tad_ext\n")
    return "fake"


def test_entry_point_plugin_overrides_tad(entry_point_plugin, monkeypatch):
    pm = get_plugin_manager(load_entrypoints=True)
    assert pm.get_plugin(entry_point_plugin) is not None
    assert float(TADHooks(pm).expert_loss(torch.randn(2, 3), torch.tensor([0, 1]))) == 42.0
    monkeypatch.setenv("TAD_PLUGIN_BLOCKED", entry_point_plugin)
    pm = get_plugin_manager(load_entrypoints=True)
    assert pm.get_plugin(entry_point_plugin) is None
    assert float(TADHooks(pm).expert_loss(torch.randn(2, 3), torch.tensor([0, 1]))) != 42.0


def test_autoload_switch(entry_point_plugin, monkeypatch):
    monkeypatch.setenv("TAD_PLUGIN_DISABLE_AUTOLOAD", "1")
    assert get_plugin_manager().get_plugin(entry_point_plugin) is None
    monkeypatch.setenv("TAD_PLUGIN_DISABLE_AUTOLOAD", "0")
    assert get_plugin_manager().get_plugin(entry_point_plugin) is not None


def test_public_names_resolve():
    from importlib import import_module

    for name in tad_plugin.__all__:
        if name != "__version__":  # each name is the object of the module that defines it
            assert getattr(tad_plugin, name) is getattr(import_module(f"tad_plugin.{tad_plugin._EXPORTS[name]}"), name)
    with pytest.raises(AttributeError):
        tad_plugin.does_not_exist  # noqa: B018


def test_readme_hook_example_runs(capsys):
    """The README's own-loop example (a torchvision CNN on digits with 40% noise, the trust loop around it) runs
    as printed: the warm-up trains on everything, then the trusted space is nearly clean and the recalibrations
    grow it."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"<!-- hooks-example -->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README lost its hooks example"
    code = block.group(1)
    loop_part = code[code.index("loop = TrustLoop("):]
    assert len([line for line in loop_part.splitlines() if line.strip()]) <= 20
    exec(compile(code, "README-hooks-example", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 8
    rows = [re.match(r"epoch (\d): trained on (\d+) trusted samples, (\d+)% of them labelled right", line).groups()
            for line in out]
    sizes, right = [int(r[1]) for r in rows], [int(r[2]) for r in rows]
    assert sizes[:2] == [1797, 1797] and right[:2] == [60, 60]  # the warm-up: every sample, 40% noise
    assert all(r >= 95 for r in right[2:]) and max(sizes[2:]) < 1797  # divisions: a nearly clean trusted space
    assert sizes[-1] > sizes[2]  # recalibrations (from epoch 4) grew it


def _split(n: int, value: bool) -> TrustSplit:
    return TrustSplit(trusted=torch.full((n,), value), confidence=torch.zeros(n), thresholds=torch.zeros(3))


def test_batched_division_defers_to_a_plugin_with_only_the_per_expert_hook():
    losses = torch.rand(4, 30)
    labels = torch.arange(30).repeat(4, 1) % 3
    pm = get_plugin_manager(load_entrypoints=False)
    tad_rows = TADHooks(pm).filter_dataset_batch(losses, labels, 3)  # TAD's batched fit
    assert [torch.equal(s.trusted, pm.get_plugin("tad").filter_dataset(losses[e], labels[e], 3).trusted)
            for e, s in enumerate(tad_rows)] == [True] * 4

    class PerExpertOnly:
        calls = 0

        @hookimpl
        def filter_dataset(self, losses):
            PerExpertOnly.calls += 1
            return _split(losses.shape[0], False)

    pm.register(PerExpertOnly())
    rows = TADHooks(pm).filter_dataset_batch(losses, labels, 3)
    assert PerExpertOnly.calls == 4 and not any(bool(s.trusted.any()) for s in rows)  # it decides every row

    class Both(PerExpertOnly):
        @hookimpl
        def filter_dataset_batch(self, losses):
            return [_split(losses.shape[1], True)] * losses.shape[0]

    pm.unregister(name=pm.get_name(next(p for p in pm.get_plugins() if isinstance(p, PerExpertOnly))))
    pm.register(Both())
    rows = TADHooks(pm).filter_dataset_batch(losses, labels, 3)
    assert PerExpertOnly.calls == 4 and all(bool(s.trusted.all()) for s in rows)  # one batched call

    class Wrong:
        @hookimpl
        def filter_dataset_batch(self):
            return [_split(30, True)]  # one split for four rows

    pm.register(Wrong())
    with pytest.raises(HookError, match="sequence of 4 TrustSplit"):
        TADHooks(pm).filter_dataset_batch(losses, labels, 3)


def test_the_trust_loop_guides_example_runs(capsys):
    """docs/trust-loop.md's example (a DataLoader over the trusted samples, loss averaging, the warm-up penalty, the
    trust report as a listener) runs as printed: its rounds start at the first division, far cleaner than the
    labels' 60%, and include recalibrations."""
    guide = (Path(__file__).parents[1] / "docs" / "trust-loop.md").read_text()
    block = re.search(r"## An example.*?```python\n(.*?)```", guide, re.S)
    assert block, "the trust-loop guide lost its example"
    exec(compile(block.group(1), "trust-loop-guide-example", "exec"), {})
    rows = [re.match(r"after (\d+) epochs, (division|recalibration): (\d+) trusted, (\d+)% labelled right", line)
            for line in capsys.readouterr().out.splitlines()]
    assert rows and all(rows)
    epochs, stages, right = [int(r[1]) for r in rows], [r[2] for r in rows], [int(r[4]) for r in rows]
    assert epochs[0] == 2 and stages[0] == "division" and "recalibration" in stages
    assert min(right) >= 85  # the labels are 60% right


@pytest.mark.parametrize("labels, error, message", [
    (torch.arange(12.0) % 3, TypeError, r"labels must be an int64 tensor \[N\], got torch.float32"),
    (torch.arange(12, dtype=torch.int32) % 3, TypeError, r"convert with .long\(\)"),
    (torch.arange(12) % 3 - 1, ValueError, r"labels must lie in \[0, 3\) but span \[-1, 1\]"),
    (torch.arange(12) % 4, ValueError, r"labels must lie in \[0, 3\) but span \[0, 3\]"),
    (torch.zeros(1, 1, 12, dtype=torch.int64), TypeError, r"non-empty int64 tensor \[N\] or \[E, N\]"),
    (torch.zeros(0, dtype=torch.int64), TypeError, r"non-empty int64 tensor"),
    ((torch.arange(12) % 3).numpy(), TypeError, r"got ndarray"),
])
def test_a_trust_loop_refuses_labels_it_would_misuse(labels, error, message):
    from tad_plugin import Schedule, TrustLoop

    with pytest.raises(error, match=message):
        TrustLoop(TADHooks(), Schedule(), labels, num_classes=3)


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "Shared"}, r"Schedule.split must be 'per-expert' or 'shared', got 'Shared'"),
    ({"outer_loop": False}, r"Schedule.inner_loop needs outer_loop"),
    ({"recompute_every": 0}, r"Schedule.recompute_every must be an integer >= 1, got 0"),
    ({"warmup_epochs": -1}, r"Schedule.warmup_epochs must be an integer >= 0, got -1"),
    ({"loss_average": 1.5}, r"Schedule.loss_average must be an integer >= 1, got 1.5"),
    ({"warmup_confidence_penalty": -1.0}, r"warmup_confidence_penalty must be a finite number >= 0"),
    ({"warmup_confidence_penalty": float("nan")}, r"warmup_confidence_penalty must be a finite number >= 0"),
    ({"warmup_epochs": 2, "recompute_every": 2, "anchor_epoch": 3, "recalibrate_every": 2},
     r"Schedule never recalibrates: divisions come before epochs 2 \+ k \* 2, recalibrations only before epochs 3"),
])
def test_a_schedule_refuses_values_it_would_misread(kwargs, message):
    # a typo in split once ran per-expert, IL without OL never divided, recompute_every=0 divided by zero later
    from tad_plugin import Schedule

    with pytest.raises(ValueError, match=message):
        Schedule(**kwargs)
    assert Schedule.off().outer_loop is False and Schedule(outer_loop=False, inner_loop=False).divides(5) is False


def test_recalibrations_count_epochs_not_divisions():
    """A recalibration runs before epoch t when a division does and t - anchor_epoch is a multiple of
    recalibrate_every; progressions that meet late are accepted, ones that never meet are refused above."""
    from tad_plugin import Schedule

    every_second = Schedule(warmup_epochs=2, recompute_every=2, anchor_epoch=4, recalibrate_every=2)
    assert [t for t in range(10) if every_second.recalibrates(t)] == [4, 6, 8]
    late = Schedule(warmup_epochs=2, recompute_every=3, anchor_epoch=5, recalibrate_every=2)
    assert [t for t in range(20) if late.recalibrates(t)] == [5, 11, 17]
    assert Schedule(warmup_epochs=2, recompute_every=2, anchor_epoch=3, recalibrate_every=2, inner_loop=False)


@pytest.mark.parametrize("returned, message", [
    (lambda n: (torch.rand(n)).numpy(), r"float torch.Tensor \[E, N\] \(or \[N\] for one expert\), got ndarray"),
    (lambda n: list(range(n)), r"got list"),
    (lambda n: torch.arange(n), r"got torch.int64 tensor"),
])
def test_a_loss_pass_of_the_wrong_type_is_named(returned, message):
    from tad_plugin import Schedule, TrustLoop
    from tad_plugin.trust_loop import TrustLoopError

    loop = TrustLoop(TADHooks(), Schedule(warmup_epochs=0), torch.arange(12) % 3, num_classes=3)
    with pytest.raises(TrustLoopError, match=message):
        loop.before_epoch(0, lambda back: returned(12))


def test_chunk_anchors_refuse_what_they_would_misread():
    from tad_plugin.trust_loop import class_chunk_anchors

    g = torch.Generator().manual_seed(0)
    features, labels, trusted = torch.randn(12, 4, generator=g), torch.arange(12) % 3, torch.ones(12, dtype=torch.bool)
    feats, labs = class_chunk_anchors(features, labels, trusted, 3, 2, g)
    assert feats.shape == (6, 4) and labs.tolist() == [0, 0, 1, 1, 2, 2]
    for args, error, message in (
            ((features, labels, trusted & False, 3, 2), ValueError, "the trusted space is empty"),
            ((features, labels, trusted, 3, 0), ValueError, "per_class must be an integer >= 1"),
            ((features[:10], labels, trusted, 3, 2), ValueError, "labels has 12 entries but 10 were expected"),
            ((features, labels + 1, trusted, 3, 2), ValueError, r"labels must lie in \[0, 3\)"),
            ((features, labels, trusted.long(), 3, 2), TypeError, r"trusted must be a bool tensor \[12\]"),
            ((features * float("nan"), labels, trusted, 3, 2), ValueError, "features contains NaN/inf")):
        with pytest.raises(error, match=message):
            class_chunk_anchors(*args, g)
