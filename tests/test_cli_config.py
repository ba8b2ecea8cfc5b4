"""Run configs: YAML loading, merge precedence, overrides, validation errors."""

import pytest

from tad_plugin.engine.config import ConfigError, RunConfig, build_config, from_dict, merge, parse_override, to_dict


def test_precedence_defaults_yaml_flags_sets(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("buffer:\n  epochs: 7\n  lr: 0.02\ndata:\n  noise: symmetric\n  noise_rate: 0.4\nseed: 3\n")
    defaults = {"buffer": {"epochs": 50, "num_experts": 4}, "distill": {"max_start_epoch": 2}}
    cfg = build_config(defaults, path, overrides={"buffer": {"lr": 0.05}},
                       sets=["buffer.lr=0.001", "tad.enabled=false"])
    assert cfg.buffer.epochs == 7            # YAML beats defaults
    assert cfg.buffer.num_experts == 4       # defaults kept where YAML is silent
    assert cfg.buffer.lr == 0.001            # --set beats flags beats YAML
    assert cfg.tad.enabled is False
    assert cfg.data.noise == "symmetric" and cfg.data.noise_rate == 0.4 and cfg.seed == 3
    assert isinstance(cfg.buffer.lr, float)


def test_every_trust_aware_diversion_knob_is_settable():
    """Each knob of TAD's plugin has a ``tad.`` key, and a value set there reaches the plugin."""
    import dataclasses

    from tad_plugin.tad import TrustAwareDiversion

    knobs = {f.name: f.default for f in dataclasses.fields(TrustAwareDiversion)}
    assert set(knobs) <= {f.name for f in dataclasses.fields(RunConfig().tad)}
    cfg = build_config(sets=["tad.search_backend=torch", "tad.gmm_max_iter=7", "tad.gmm_tol=0.01", "tad.sieve=false",
                             "tad.gmm_reg_covar=0.001", "tad.gmm_random_state=3"])
    plugin = TrustAwareDiversion(**cfg.tad.plugin_kwargs())
    assert (plugin.search_backend, plugin.gmm_max_iter, plugin.gmm_tol, plugin.sieve, plugin.gmm_reg_covar,
            plugin.gmm_random_state) == ("torch", 7, 0.01, False, 0.001, 3)


def test_round_trip_to_dict():
    cfg = RunConfig()
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


def test_int_to_float_and_null():
    cfg = build_config(sets=["buffer.lr=1", "data.root=null", "tad.reg_weight=0.5"])
    assert cfg.buffer.lr == 1.0 and isinstance(cfg.buffer.lr, float)
    assert cfg.data.root is None and cfg.tad.plugin_kwargs() == {"reg_weight": 0.5}


@pytest.mark.parametrize("sets, message", [
    (["buffer.epoch=3"], r"unknown config key 'buffer.epoch'; known keys: buffer.num_experts"),
    (["nosuch=1"], r"unknown config key 'nosuch'"),
    (["buffer.epochs=many"], r"buffer.epochs must be int, got 'many'"),
    (["buffer.epochs=2.5"], r"buffer.epochs must be int"),
    (["tad.enabled=3"], r"tad.enabled must be bool"),
    (["buffer.lr=-1"], r"buffer.lr must be > 0"),
    (["data.noise=gaussian"], r"data.noise must be one of"),
    (["data.noise_rate=1.5"], r"noise_rate must lie in \[0, 1\)"),
    (["data.noise_rate=0.4"], r"data.noise_rate 0.4 without data.noise flips no label; give the kind too"),
    (["data.noise=symmetric"], r"data.noise symmetric at data.noise_rate 0 flips no label; give --noise-rate"),
    (["tad.split=global"], r"tad.split must be 'per-expert' or 'shared'"),
    (["tad.recompute_every=2", "tad.anchor_epoch=5", "tad.recalibrate_every=2"],
     r"TAD never recalibrates: divisions come before epochs tad.warmup_epochs \+ k \* tad.recompute_every "
     r"\(2 \+ k \* 2\)"),
    (["distill.compile_mode=fastest"], r"distill.compile_mode must be one of default, reduce-overhead"),
    (["distill.inner_grad=compiled", "distill.recompute_steps=convolutions"],
     r"distill.recompute_steps must be false, true or elementwise, got 'convolutions'"),
    (["distill.recompute_steps=elementwise"], r"distill.recompute_steps needs distill.inner_grad explicit or compiled"),
    (["distill.init_consensus=0"], r"distill.init_consensus must lie in \(0, 1\]"),
    (["buffer.epochs=3", "distill.max_start_epoch=5"], r"exceeds buffer.epochs = 3"),
    (["buffer=3"], r"buffer must be a mapping"),
    (["tad.search_backend=gpu"], r"tad.search_backend = 'gpu': search_backend must be 'auto', 'faiss' or 'torch'"),
    (["tad.gmm_max_iter=0"], r"tad.gmm_max_iter = 0: gmm_max_iter must be >= 1"),
    (["tad.gmm_tol=-1"], r"tad.gmm_tol = -1.0: "),
    (["tad.sieve=maybe"], r"tad.sieve must be bool"),
    (["tad.recall_confidence=0.3"], r"tad.recall_confidence = 0.3: recall_confidence must lie in \(0.5, 1\]"),
    (["buffer.lr=.nan"], r"buffer.lr must be a finite number, got nan"),
    (["distill.lr_img=.inf"], r"distill.lr_img must be a finite number, got inf"),
    (["seed=-1"], r"seed must be >= 0"),
    (["data.noise_seed=-2"], r"data.noise_seed must be >= 0"),
    (["buffer.lr=[1"], r"cannot parse the value: expected ',' or '\]', but got '<stream end>' at line 1, column 3"),
])
def test_bad_values_name_the_key(sets, message):
    with pytest.raises(ConfigError, match=message):
        build_config(sets=sets)


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        build_config(yaml_path=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("buffer: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(yaml_path=bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        build_config(yaml_path=listy)


def test_parse_override_and_merge():
    assert parse_override("a.b.c=0.5") == {"a": {"b": {"c": 0.5}}}
    assert build_config(sets=["distill.lr_lr=1e-5"]).distill.lr_lr == 1e-5  # YAML 1.1 reads 1e-5 as text
    assert parse_override("x=hello") == {"x": "hello"}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("buffer.epochs")
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_eval_compile_reaches_the_evaluator():
    from tad_plugin.cli import build_parser, config_from_args
    from tad_plugin.data import load_dataset
    from tad_plugin.engine.pipeline import Pipeline

    ds = load_dataset("digits")
    for flag in (False, True):
        cfg = config_from_args(build_parser().parse_args(["run", "--dataset", "digits", "--device", "cpu",
                                                          "--set", f"eval.compile={str(flag).lower()}"]))
        assert Pipeline(cfg, progress=False).evaluator(ds).compile is flag


def test_the_distill_section_reaches_the_matcher_by_field_name():
    """The settings DistillConfig and MatchingConfig share are declared with the same types, and the pipeline
    hands every one of them on (no hand-kept list that a new setting could miss)."""
    import dataclasses
    import typing

    from tad_plugin.adapters.mtt import MTT
    from tad_plugin.engine.config import DistillConfig
    from tad_plugin.engine.matching import MatchingConfig

    ours, theirs = typing.get_type_hints(DistillConfig), typing.get_type_hints(MatchingConfig)
    shared = sorted(set(ours) & set(theirs))
    # the same type, or the matcher's admits None too (label_momentum: None = its momentum)
    assert len(shared) >= 22 and all(theirs[k] in (ours[k], ours[k] | None) for k in shared), shared
    changed = {"iterations": 7, "syn_steps": 3, "lr_img": 5.0, "checkpoint_seconds": 1.5, "adaptive_length": True,
               "label_momentum": 0.3, "min_start_epoch": 1, "compile_mode": "reduce-overhead",
               "inner_grad": "compiled", "recompute_steps": "elementwise"}
    cfg = build_config(sets=[f"distill.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changed.items()]
                       + ["data.dataset=digits", "device=cpu"])
    matching = MTT(cfg, progress=False).matching_config()
    assert {k: getattr(matching, k) for k in changed} == changed
    assert all(getattr(matching, k) == getattr(cfg.distill, k) for k in shared)
    assert {f.name for f in dataclasses.fields(MatchingConfig)} - set(shared) == {
        "momentum", "dsa_strategy", "log_every", "seed", "channels_last"}  # the matcher's own


def test_run_config_validates_every_section():
    """RunConfig.validate calls each section's validate by name: a section added later must be added there too."""
    import dataclasses

    from tad_plugin.engine.config import RunConfig

    called: list[str] = []
    cfg = RunConfig()
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section) and hasattr(section, "validate"):
            object.__setattr__(section, "validate", lambda name=f.name: called.append(name))
    cfg.validate()
    assert sorted(called) == sorted(f.name for f in dataclasses.fields(cfg)
                                    if dataclasses.is_dataclass(getattr(cfg, f.name)))


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("buffer:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        build_config(yaml_path=bad)
    assert "\n" not in str(info.value) and "at line 3, column 1; fix that line" in str(info.value)


def test_the_label_source_named_on_the_command_line_replaces_the_config_files(tmp_path):
    from tad_plugin.cli import build_parser, config_from_args

    noisy = tmp_path / "noisy.yaml"
    noisy.write_text("data: {noise: symmetric, noise_rate: 0.4}\n")
    labelled = tmp_path / "labelled.yaml"
    labelled.write_text("data: {cifar_n: a.npz, label_set: given_label}\n")

    def data(*argv):
        return config_from_args(build_parser().parse_args(["run", *argv])).data

    got = data("--config", str(noisy), "--cifar-n", "b.npz", "--label-set", "cleaned_label")
    assert (got.noise, got.noise_rate, got.cifar_n, got.label_set) == (None, 0.0, "b.npz", "cleaned_label")
    got = data("--config", str(labelled), "--noise", "symmetric", "--noise-rate", "0.2")
    assert (got.noise, got.noise_rate, got.cifar_n) == ("symmetric", 0.2, None)
    with pytest.raises(ConfigError, match="data.noise_rate 0.3 without data.noise"):
        data("--config", str(noisy), "--cifar-n", "b.npz", "--noise-rate", "0.3")
    with pytest.raises(ConfigError, match="give either data.noise .* or data.cifar_n"):
        data("--cifar-n", "b.npz", "--noise", "symmetric", "--noise-rate", "0.3")
