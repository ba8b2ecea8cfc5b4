"""Run an unmodified upstream buffer or distill script with TAD's hooks installed (``tad wrap``).

What :func:`run_wrapped` does, in order:

1. Resolves the script in the method's table (:mod:`.scripts`), changes into the script's directory
   and puts it (and the repository root) first on ``sys.path``, as ``cd DIR && python SCRIPT`` would.
2. With ``cifar10`` set (``--cifar10 FILE.npz``), writes torchvision's CIFAR-10 folder from that arrays file
   beside the trust state, or reuses it (:mod:`.cifar10`), and lets torchvision's checksum check accept its
   files for the rest of the run.
3. Imports the script's utils module and replaces two of its attributes:
   ``get_dataset`` -- calls upstream's own (with ``data_path`` = the CIFAR-10 folder of step 2, if any) and
   returns its result with ``dst_train`` relabelled: noisy labels for a
   buffer script (``data.noise`` / ``data.cifar_n``), and for a distill script only the trusted
   pool of the buffer run with its recalibrated labels (the real-image initialisation
   ``images_all`` / ``indices_class`` is built from it); ``epoch`` (buffer scripts only) -- the
   :class:`~.epoch.TADEpoch` wrapper (division, TAD's criterion, recalibration).
4. Runs the script with ``runpy`` as ``__main__`` with ``sys.argv = [SCRIPT, *ARGS]``.
5. Restores ``sys.argv``, ``sys.path``, the working directory, ``sys.modules`` (the upstream
   modules are dropped again) and torchvision's checksum check, and saves the trust state.

Everything the script writes (``replay_buffer_{n}.pt``, logged images) is written by the script
itself, in its own format. With ``tad.enabled = False`` only the noise is injected (the noisy baseline).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib
import inspect
import logging
import os
import runpy
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checks import short_classes
from ..engine.config import DataConfig, TADConfig, load_yaml
from ..manager import TADHooks, get_plugin_manager
from ..trust_report import TrustReport
from .anchors import EXPERT_FEATURES, PixelMap, resolve_embedding
from .cifar10 import Cifar10Folder, accept, accept_folder, cifar10_folder
from .epoch import TADEpoch
from .labels import Relabelled, corrupt_labels, dataset_labels
from .scripts import resolve_script
from .state import TrustState, default_state_path

__all__ = ["WrapConfig", "WrapResult", "run_wrapped", "install", "config_from_dict", "config_from_env", "CONFIG_ENV"]

log = logging.getLogger("tad_plugin.upstream")

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
            :func:`~.state.default_state_path` of the checkout (outside it). The buffer run's trust report
            (``trust_report.json``, and ``.png`` with matplotlib) is written beside it.
        seed: seeds the anchors.
        cifar10: an arrays file (``train_images`` uint8 [N, 32, 32, 3] or encoded ``train_jpeg``, labels 0..9,
            the same for ``test_``) whose CIFAR-10 the script loads instead of torchvision's download: see
            :mod:`.cifar10`; None = the script's own ``data_path``.
    """

    data: DataConfig = field(default_factory=DataConfig)
    tad: TADConfig = field(default_factory=TADConfig)
    state: str | None = None
    seed: int = 0
    cifar10: str | None = None


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
    state_path = Path(cfg.state).resolve() if cfg.state else default_state_path(repo)
    patch = _patch(cfg, entry.role, state_path, hooks)
    with _script_env(path, Path(repo).resolve(), list(args)), contextlib.ExitStack() as stack:
        if patch.cifar10 is not None:
            stack.enter_context(accept_folder(patch.cifar10))
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
    exit. ``config`` None = :func:`config_from_env`; its ``state`` None = :func:`~.state.default_state_path`
    of the working directory (run buffer and distill from the same place, or set it). With ``cifar10`` set,
    torchvision's checksum check accepts the written folder until the interpreter exits.
    """
    cfg = config or config_from_env()
    if role not in ("buffer", "distill"):
        raise ValueError(f"role must be 'buffer' or 'distill', got {role!r}")
    patch = _patch(cfg, role, Path(cfg.state).resolve() if cfg.state else default_state_path(Path.cwd()), hooks)
    patch.install(namespace, "the script")
    if patch.cifar10 is not None:
        accept(patch.cifar10)
    atexit.register(patch.finish)


def config_from_dict(user: dict[str, Any]) -> WrapConfig:
    """A :class:`WrapConfig` from a mapping with ``data``, ``tad``, ``state``, ``seed``, ``cifar10``.

    Raises:
        ConfigError: an unknown key or a bad value (the message names it).
    """
    from ..engine.config import ConfigError, from_dict

    unknown = set(user) - {"data", "tad", "state", "seed", "cifar10"}
    if unknown:
        raise ConfigError(f"unknown tad wrap config key(s) {sorted(unknown)}; known: data, tad, state, seed, cifar10")
    cifar10 = user.get("cifar10")
    return WrapConfig(data=from_dict(DataConfig, user.get("data", {}), "data."),
                      tad=from_dict(TADConfig, user.get("tad", {}), "tad."),
                      state=user.get("state"), seed=int(user.get("seed", 0)),
                      cifar10=None if cifar10 is None else str(cifar10))


def config_from_env() -> WrapConfig:
    """The config named by ``$TAD_WRAP_CONFIG`` (a ``tad wrap --tad-config`` YAML file), else the defaults."""
    path = os.environ.get(CONFIG_ENV)
    return config_from_dict(load_yaml(path) if path else {})


def _caller_paths(cfg: WrapConfig) -> WrapConfig:
    """``cfg`` with its input files (``tad.features``, ``data.cifar_n``, ``cifar10``) made absolute, since the
    script runs in its own folder but the user named them relative to the working directory."""
    def absolute(value: str | None) -> str | None:
        return value if value in (None, EXPERT_FEATURES) else str(Path(value).expanduser().resolve())

    return dataclasses.replace(cfg, tad=dataclasses.replace(cfg.tad, features=absolute(cfg.tad.features)),
                               data=dataclasses.replace(cfg.data, cifar_n=absolute(cfg.data.cifar_n)),
                               cifar10=absolute(cfg.cifar10))


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
    cifar10 = None
    if cfg.cifar10 is not None:
        cifar10 = cifar10_folder(cfg.cifar10, state_path.parent)
        log.warning(cifar10.warning())
    return _Patch(cfg, role, state_path, hooks, cifar10)


class _Patch:
    """The replacements of ``get_dataset`` / ``epoch`` and what they share."""

    def __init__(self, cfg: WrapConfig, role: str, state_path: Path, hooks: TADHooks | None,
                 cifar10: Cifar10Folder | None = None) -> None:
        self.cfg, self.role, self.state_path, self.hooks, self.cifar10 = cfg, role, state_path, hooks, cifar10
        self.wrapped_epoch: TADEpoch | None = None
        self.report = TrustReport()
        self.report_path = state_path.parent / "trust_report.json"
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
            wrapped = self.wrapped_epoch = TADEpoch(namespace["epoch"], self.hooks, self.cfg.tad, self.state_path,
                                                    seed=self.cfg.seed)

            def epoch(*args: Any, **kwargs: Any) -> Any:
                seen = len(wrapped.log)
                out = wrapped(*args, **kwargs)
                if len(wrapped.log) > seen:  # this epoch began with a division
                    self._record_division(wrapped.log[-1])
                return out

            namespace["epoch"] = epoch

        def get_dataset(*args: Any, **kwargs: Any) -> Any:
            if self.cifar10 is not None:
                args, kwargs = self._cifar10_data_path(signature, args, kwargs)
            out = list(original_get_dataset(*args, **kwargs))
            call = signature.bind_partial(*args, **kwargs).arguments
            out[6] = self._train_set(out, str(call.get("dataset", "")), call.get("args"))  # dst_train
            return tuple(out)

        namespace["get_dataset"] = get_dataset

    def _cifar10_data_path(self, signature: inspect.Signature, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``get_dataset``'s arguments with ``data_path`` = the CIFAR-10 folder (and the script's ``args.data_path``
        set to it, so that what the script logs is what it read)."""
        assert self.cifar10 is not None
        call = signature.bind(*args, **kwargs)
        dataset = call.arguments.get("dataset")
        if dataset != "CIFAR10":
            raise ValueError(f"--cifar10 supplies CIFAR-10, but the script loads {dataset!r}; run it with "
                             f"--dataset=CIFAR10, or drop --cifar10")
        if "data_path" not in call.arguments:
            raise ValueError("upstream's get_dataset takes no data_path here; is this the upstream code tad wrap "
                             "knows? Drop --cifar10 and give the script its data folder")
        call.arguments["data_path"] = str(self.cifar10.root)
        script_args = call.arguments.get("args")
        if script_args is not None and hasattr(script_args, "data_path"):
            script_args.data_path = str(self.cifar10.root)
        return call.args, call.kwargs

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
            self._check_pool(labels[indices], num_classes, args)
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

    def _record_division(self, entry: dict[str, Any]) -> None:
        """Print one line per division; add the first expert's divisions to the trust report and rewrite it
        (the report follows the first expert, as ``tad run``'s does)."""
        wrapped = self.wrapped_epoch
        assert wrapped is not None and wrapped.state is not None and wrapped.expert is not None
        state, loop = wrapped.state, wrapped.expert.loop
        labels, trusted = loop.labels[0].cpu(), loop.trusted[0].cpu()  # the one expert (E = 1) under training
        n = len(state.noisy_labels)
        stage = "recalibration" if entry["recalibrated"] else "division"
        injected = not torch.equal(state.noisy_labels, state.clean_labels)
        line = f"tad wrap: expert {entry['expert']} epoch {entry['epoch']}: {stage}, {entry['trusted']} of {n} trusted"
        if injected:
            correct = labels[trusted] == state.clean_labels[trusted]
            line += f" ({float(correct.float().mean()):.1%} of them correctly labelled)"
        print(line, flush=True)
        if entry["expert"] == 0:
            self.report.add(epoch=entry["epoch"], stage=stage, trusted=trusted, labels=labels,
                            noisy_labels=state.noisy_labels, clean_labels=state.clean_labels if injected else None)
            self.report.save_json(self.report_path)

    def _check_pool(self, pool_labels: torch.Tensor, num_classes: int, args: Any) -> None:
        """Refuse, before the script builds its initial images, a trusted pool with fewer samples of a class than
        the script's ``args.ipc`` real images per class (upstream would fail later with a shape error)."""
        ipc = getattr(args, "ipc", None)
        if not isinstance(ipc, int) or str(getattr(args, "pix_init", "real")) != "real":
            return
        listed = short_classes(pool_labels, num_classes, ipc)
        if listed:
            raise ValueError(f"the trusted pool of {self.state_path} has fewer than --ipc={ipc} samples in {listed}; "
                             f"the script initialises {ipc} real images per class from it. Lower --ipc, or train the "
                             f"buffer with more experts or epochs so that more samples are trusted")

    def finish(self) -> None:
        if self.report.rounds:
            try:  # the JSON was rewritten after every division; the plot once, at the end
                self.report.plot(self.report_path.with_suffix(".png"), title="Trust report (first expert)")
            except ImportError:
                pass  # matplotlib is optional; the JSON holds the same numbers
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
