"""Run an unmodified upstream buffer or distill script with TAD's hooks installed (``tad wrap``).

What :func:`run_wrapped` does, in order:

1. Resolves the script in the method's table (:mod:`.scripts`), changes into the script's directory
   and puts it (and the repository root) first on ``sys.path``, as ``cd DIR && python SCRIPT`` would.
2. Imports the script's utils module and replaces two of its attributes:
   ``get_dataset`` -- returns upstream's own result with ``dst_train`` relabelled: noisy labels for a
   buffer script (``data.noise`` / ``data.cifar_n``), and for a distill script only the trusted
   pool of the buffer run with its recalibrated labels (the real-image initialisation
   ``images_all`` / ``indices_class`` is built from it); ``epoch`` (buffer scripts only) -- the
   :class:`~.epoch.TADEpoch` wrapper (division, TAD's criterion, recalibration).
3. Runs the script with ``runpy`` as ``__main__`` with ``sys.argv = [SCRIPT, *ARGS]``.
4. Restores ``sys.argv``, ``sys.path``, the working directory and ``sys.modules`` (the upstream
   modules are dropped again), and saves the trust state.

Everything the script writes (``replay_buffer_{n}.pt``, logged images) is written by the script
itself, in its own format. With ``tad.enabled = False`` only the noise is injected (the noisy baseline).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib
import inspect
import os
import runpy
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine.config import DataConfig, TADConfig, load_yaml
from ..manager import TADHooks, get_plugin_manager
from .anchors import EXPERT_FEATURES, PixelMap, resolve_embedding
from .epoch import TADEpoch
from .labels import Relabelled, corrupt_labels, dataset_labels
from .scripts import resolve_script
from .state import TrustState

__all__ = ["WrapConfig", "WrapResult", "run_wrapped", "install", "config_from_dict", "config_from_env", "CONFIG_ENV"]

#: Names the YAML config of the in-script mode (:func:`install`).
CONFIG_ENV = "TAD_WRAP_CONFIG"


@dataclass
class WrapConfig:
    """Settings of a wrapped run (``tad wrap --tad-config FILE.yaml`` has the sections ``data`` and ``tad``).

    Attributes:
        data: the noise injected into upstream's train set (``noise``, ``noise_rate``, ``noise_seed``,
            or ``cifar_n`` and ``label_set``); its other keys are unused here.
        tad: TAD's schedule and plugin settings; ``tad.features``: a feature extractor file (``tad
            features train``; anchors distilled from the early trajectory, as the engine does), a ``.pt``
            file holding a float tensor [N, D] in the train set's order, ``"expert"`` (the expert's
            penultimate activations), or None = the dataset's default extractor if it exists, else
            ``"expert"`` with a logged warning (see :mod:`.epoch`).
        state: the trust-state file the buffer run writes and the distill run reads; None =
            ``REPO/tad_wrap/state.pt``.
        seed: seeds the anchors.
    """

    data: DataConfig = field(default_factory=DataConfig)
    tad: TADConfig = field(default_factory=TADConfig)
    state: str | None = None
    seed: int = 0


@dataclass
class WrapResult:
    """What a wrapped run did: the script's role, the state file and, for a buffer run, the division log."""

    role: str
    state_path: Path
    divisions: list[dict[str, Any]]
    summary: dict[str, Any] | None


def run_wrapped(method: str, repo: str | os.PathLike[str], script: str, args: Sequence[str],
                config: WrapConfig | None = None, hooks: TADHooks | None = None) -> WrapResult:
    """Run ``repo/script args`` (an upstream ``method`` script) unmodified, with TAD (see the module docstring).

    Args:
        method: ``mtt``, ``ftd``, ``datm`` or ``att``.
        repo: root of the user's checkout.
        script: the script, relative to ``repo`` (e.g. ``buffer.py``, ``buffer/buffer_FTD.py``).
        args: the script's own command-line arguments.
        config: noise and TAD settings; None = defaults (no noise, TAD on).
        hooks: the hook facade; None = TAD's plugin with ``config.tad``'s settings (and entry-point plugins).

    Raises:
        ValueError / FileNotFoundError: unknown script, missing repository or trust state.
        SystemExit: the script's own exit (e.g. an argparse error).
    """
    cfg = _caller_paths(config or WrapConfig())
    path, entry = resolve_script(method, repo, script)
    state_path = Path(cfg.state).resolve() if cfg.state else Path(repo).resolve() / "tad_wrap" / "state.pt"
    patch = _patch(cfg, entry.role, state_path, hooks)
    with _script_env(path, Path(repo).resolve(), list(args)):
        utils = importlib.import_module(entry.utils_module)
        patch.install(vars(utils), utils.__name__)
        try:
            runpy.run_path(str(path), run_name="__main__")
        except BaseException:
            with contextlib.suppress(Exception):  # save what the state holds; the script's error is the one to see
                patch.finish()
            raise
        patch.finish()
    return WrapResult(entry.role, state_path, patch.divisions, patch.summary)


def install(role: str, namespace: dict[str, Any], config: WrapConfig | None = None,
            hooks: TADHooks | None = None) -> None:
    """The in-script alternative to :func:`run_wrapped`: patch the script's own ``get_dataset`` (and,
    with ``role="buffer"``, ``epoch``) in ``namespace`` -- call it as ``install("buffer", globals())``
    right after the script's ``from utils import ...`` line. The trust state is saved at interpreter
    exit. ``config`` None = :func:`config_from_env`; its ``state`` None = ``./tad_wrap/state.pt``
    relative to the working directory (run buffer and distill from the same place, or set it).
    """
    cfg = config or config_from_env()
    if role not in ("buffer", "distill"):
        raise ValueError(f"role must be 'buffer' or 'distill', got {role!r}")
    patch = _patch(cfg, role, Path(cfg.state or "tad_wrap/state.pt").resolve(), hooks)
    patch.install(namespace, "the script")
    atexit.register(patch.finish)


def config_from_dict(user: dict[str, Any]) -> WrapConfig:
    """A :class:`WrapConfig` from a mapping with ``data``, ``tad``, ``state``, ``seed``.

    Raises:
        ConfigError: an unknown key or a bad value (the message names it).
    """
    from ..engine.config import ConfigError, from_dict

    unknown = set(user) - {"data", "tad", "state", "seed"}
    if unknown:
        raise ConfigError(f"unknown tad wrap config key(s) {sorted(unknown)}; known: data, tad, state, seed")
    return WrapConfig(data=from_dict(DataConfig, user.get("data", {}), "data."),
                      tad=from_dict(TADConfig, user.get("tad", {}), "tad."),
                      state=user.get("state"), seed=int(user.get("seed", 0)))


def config_from_env() -> WrapConfig:
    """The config named by ``$TAD_WRAP_CONFIG`` (a ``tad wrap --tad-config`` YAML file), else the defaults."""
    path = os.environ.get(CONFIG_ENV)
    return config_from_dict(load_yaml(path) if path else {})


def _caller_paths(cfg: WrapConfig) -> WrapConfig:
    """``cfg`` with its input files (``tad.features``, ``data.cifar_n``) made absolute, since the script
    runs in its own folder but the user named them relative to the working directory."""
    def absolute(value: str | None) -> str | None:
        return value if value in (None, EXPERT_FEATURES) else str(Path(value).expanduser().resolve())

    return dataclasses.replace(cfg, tad=dataclasses.replace(cfg.tad, features=absolute(cfg.tad.features)),
                               data=dataclasses.replace(cfg.data, cifar_n=absolute(cfg.data.cifar_n)))


#: ``tad.*`` settings of the engine's expert trainer that an upstream script's own loop cannot honour, with the
#: value that means "off": one expert trains at a time, so there is no group to share a split with, and the
#: wrapper keeps no parameter snapshots to average losses over.
ENGINE_ONLY_TAD = {"split": "per-expert", "loss_average": 1}


def _patch(cfg: WrapConfig, role: str, state_path: Path, hooks: TADHooks | None) -> _Patch:
    cfg.data.validate()
    cfg.tad.validate()
    for key, off in ENGINE_ONLY_TAD.items():
        if getattr(cfg.tad, key) != off:
            raise ValueError(f"tad.{key} = {getattr(cfg.tad, key)!r} is not available under tad wrap (upstream's "
                             f"script trains one expert at a time on its own loader); leave it at {off!r}, or use "
                             f"`tad run`, whose engine implements it")
    if cfg.tad.enabled and hooks is None:
        from ..tad import TrustAwareDiversion

        hooks = TADHooks(get_plugin_manager(TrustAwareDiversion(**cfg.tad.plugin_kwargs())))
    return _Patch(cfg, role, state_path, hooks)


class _Patch:
    """The replacements of ``get_dataset`` / ``epoch`` and what they share."""

    def __init__(self, cfg: WrapConfig, role: str, state_path: Path, hooks: TADHooks | None) -> None:
        self.cfg, self.role, self.state_path, self.hooks = cfg, role, state_path, hooks
        self.wrapped_epoch: TADEpoch | None = None
        self.divisions: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None

    def install(self, namespace: dict[str, Any], where: str) -> None:
        """Replace ``get_dataset`` (and, for a buffer script, ``epoch``) in ``namespace`` (a module's
        ``__dict__`` or a script's ``globals()``)."""
        for name in ("get_dataset", "epoch") if self.role == "buffer" else ("get_dataset",):
            if not callable(namespace.get(name)):
                raise ValueError(f"{where} has no function {name}; is this the upstream code tad wrap knows?")
        original_get_dataset = namespace["get_dataset"]
        signature = inspect.signature(original_get_dataset)
        if self.role == "buffer" and self.cfg.tad.enabled:
            assert self.hooks is not None
            # installed now: the script binds ``epoch`` when it imports it, before get_dataset runs
            self.wrapped_epoch = TADEpoch(namespace["epoch"], self.hooks, self.cfg.tad, self.state_path,
                                          seed=self.cfg.seed)
            namespace["epoch"] = self.wrapped_epoch

        def get_dataset(*args: Any, **kwargs: Any) -> Any:
            out = list(original_get_dataset(*args, **kwargs))
            call = signature.bind_partial(*args, **kwargs).arguments
            out[6] = self._train_set(out, str(call.get("dataset", "")), call.get("args"))  # dst_train
            return tuple(out)

        namespace["get_dataset"] = get_dataset

    def _train_set(self, returned: list[Any], dataset: str, args: Any) -> Relabelled:
        """``dst_train`` (``returned[6]``) relabelled; for a buffer run also starts the wrapped epoch."""
        dst_train, num_classes = returned[6], int(returned[2])
        clean = dataset_labels(dst_train)
        noisy = corrupt_labels(clean, self.cfg.data, num_classes)
        if self.role == "distill":
            if not self.cfg.tad.enabled:
                return Relabelled(dst_train, noisy)
            state = TrustState.load(self.state_path)
            if not torch.equal(state.noisy_labels, noisy):
                raise ValueError(f"{self.state_path} was written for other labels than this run's (noise settings "
                                 f"or dataset differ); pass the buffer run's --tad-config / noise flags")
            indices, labels = state.pool()
            self.summary = state.summary()
            print(f"tad wrap: distilling from the trusted pool {self.summary}", flush=True)
            return Relabelled(dst_train, labels, indices)
        if self.wrapped_epoch is not None:
            state = TrustState.empty(clean, noisy, num_classes)
            if self.state_path.is_file():
                previous = TrustState.load(self.state_path)
                if not torch.equal(previous.noisy_labels, noisy):
                    raise ValueError(f"{self.state_path} holds experts trained on other labels; give this run "
                                     f"another --state (or delete the file together with its replay buffers)")
                state = previous  # upstream appends replay_buffer_{n}.pt files; the votes accumulate too
            embedding = None
            if self.cfg.tad.inner_loop:
                embedding = resolve_embedding(self.cfg.tad.features, dataset, dst_train,
                                              PixelMap.from_get_dataset(returned, args))
            self.wrapped_epoch.start(state, embedding)
        return Relabelled(dst_train, noisy)

    def finish(self) -> None:
        if self.wrapped_epoch is not None and self.wrapped_epoch.state is not None:
            self.wrapped_epoch.finish()
            self.divisions = self.wrapped_epoch.log
            if self.wrapped_epoch.state.experts:
                self.summary = self.wrapped_epoch.state.summary()
                print(f"tad wrap: trust state {self.state_path}: {self.summary}", flush=True)


@contextlib.contextmanager
def _script_env(script: Path, repo: Path, args: list[str]) -> Iterator[None]:
    """cwd = the script's folder, sys.path[0:2] = [script folder, repo], sys.argv = [script, *args]; all
    restored, and the modules imported from ``repo`` are dropped from ``sys.modules`` afterwards."""
    saved_argv, saved_path, saved_cwd = list(sys.argv), list(sys.path), os.getcwd()
    saved_modules = set(sys.modules)
    os.chdir(script.parent)
    sys.path[:0] = [str(script.parent), str(repo)]
    sys.argv[:] = [str(script), *args]
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.argv[:], sys.path[:] = saved_argv, saved_path
        for name in set(sys.modules) - saved_modules:
            module = sys.modules[name]
            where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), "")
            if str(where).startswith(str(repo)):  # namespace packages (FTD's utils/) have only __path__
                del sys.modules[name]
