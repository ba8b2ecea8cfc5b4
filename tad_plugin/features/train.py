"""SimCLR training with the whole dataset resident on the device, time-budgeted and resumable.

The training images stay on the device as uint8; each step gathers a batch, draws two augmented views
on the device (:mod:`.augment`), runs both through the model in one bfloat16 pass (channels_last) and
takes an SGD step (or a LARS step, :mod:`.lars`, with ``TrainConfig(optimizer="lars")``). The loop reads
nothing back to the host inside an epoch: the loss is summed on the device and read once per epoch. Labels are
never used for training; they serve only the cosine kNN evaluation (training split as the bank, test split as
queries).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import ImageDataset, channel_stats
from ..errors import TADError
from ..files import atomic_torch_save, torch_load
from .augment import AugmentConfig, augment_batch, compiled_render, render
from .extractor import FeatureExtractor, save_extractor
from .knn import knn_accuracy
from .lars import LARS, lars_param_groups
from .simclr import SimCLRModel, nt_xent_loss

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "train_simclr", "state_path_for",
           "saved_progress", "lr_at", "measure_throughput", "DEFAULT_LR", "OPTIMIZERS"]

STATE_FORMAT = "tad_plugin.features.train_state/1"

#: Peak learning rate per 256 images of batch when ``TrainConfig.lr`` is ``None``, per optimizer.
DEFAULT_LR = {"sgd": 0.06, "lars": 0.3}
OPTIMIZERS = tuple(DEFAULT_LR)


class TrainingError(TADError, RuntimeError):
    """Training cannot start or continue (diverged loss, mismatched resume state, ...)."""


@dataclass(frozen=True)
class TrainConfig:
    """SimCLR hyper-parameters, close to the CIFAR ResNet-18 SGD recipe of dkobak/simclr-cifar10 (SimSiam's
    CIFAR settings: SGD momentum 0.9, weight decay 5e-4, cosine schedule, temperature 0.5, crops from a fifth
    of the area, the SimCLR colour jitter). Where ours differs: peak lr 0.06 * batch / 256 where that
    recipe now uses 0.03 * batch / 256; a projector 512 -> 2048 -> BatchNorm -> 128 (theirs:
    512 -> 1024 -> 128 without BatchNorm); inputs normalised per channel; a linear warm-up.

    ``optimizer="lars"`` is the SimCLR paper's / solo-learn's alternative (usually with ``weight_decay``
    1e-6..1e-5 and ``temperature`` 0.2).

    Attributes:
        epochs: most epochs to train; the cosine schedule spans them unless ``time_budget`` ends it sooner.
        time_budget: seconds of training (``None``: no limit). The schedule is re-fitted after every
            epoch so that the cosine decay reaches zero when the budget runs out; the time counts
            compilation, augmentation and the periodic kNN evaluations.
        batch_size: images per step (each gives two views, so the model sees ``2 * batch_size``).
        optimizer: ``"sgd"`` (torch SGD with momentum, weight decay on every parameter) or ``"lars"``
            (:class:`.lars.LARS`: layer-wise trust ratio on conv/linear weights; biases and BatchNorm
            parameters get plain SGD momentum and no weight decay).
        lr: peak learning rate (``None``: ``0.06 * batch_size / 256`` for SGD, ``0.3 * batch_size / 256``
            for LARS, see :attr:`base_lr`).
        momentum, weight_decay: the optimizer's momentum and weight decay (the SGD recipe's 5e-4 is the
            default for both optimizers; LARS recipes use 1e-6..1e-5).
        lars_eta: LARS trust coefficient (0.001 in SimCLR; solo-learn's CIFAR runs use 0.02); unused by SGD.
        temperature: NT-Xent temperature.
        warmup_epochs: linear warm-up before the cosine decay (capped at a fifth of ``epochs``).
        hidden_dim, out_dim: projection head widths (512 -> hidden_dim -> out_dim).
        eval_every: run the kNN evaluation every this many epochs (and after the last one); 0: last only.
        knn_ks: neighbour counts of the kNN evaluation.
        checkpoint_every: write the resumable training state every this many epochs (and at the end; 0 = every epoch).
        seed: seeds torch's generators (CPU and CUDA).
        amp: bfloat16 autocast on CUDA.
        compile: ``torch.compile`` the model and the augmentation's pixel operations
            (:func:`~tad_plugin.features.augment.compiled_render`; CUDA): faster steps after a compilation at
            the start, so worth it for all but short runs.
        augment: the augmentation parameters.
        image_size: side of the square images trained on: the training and test images are resized once
            (antialiased bilinear, to uint8) and the saved extractor resizes what it embeds to the same size.
            ``None``: the dataset's own size. A smaller size buys more epochs of a time budget (64 -> 32 is a
            quarter of the pixels) at the cost of detail.
    """

    epochs: int = 200
    time_budget: float | None = None
    batch_size: int = 512
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lars_eta: float = 1e-3
    temperature: float = 0.5
    warmup_epochs: int = 10
    hidden_dim: int = 2048
    out_dim: int = 128
    eval_every: int = 5
    knn_ks: tuple[int, ...] = (10, 200)
    checkpoint_every: int = 10
    seed: int = 0
    amp: bool = True
    compile: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    image_size: int | None = None

    def __post_init__(self) -> None:
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels or None (the dataset's own), got {self.image_size}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError(f"time_budget must be > 0 seconds or None, got {self.time_budget}")
        if self.temperature <= 0 or (self.lr is not None and self.lr <= 0):
            raise ValueError(f"temperature and lr must be > 0, got {self.temperature} and {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.lars_eta <= 0:
            raise ValueError(f"lars_eta must be > 0, got {self.lars_eta}")
        if self.hidden_dim < 1 or self.out_dim < 1:
            raise ValueError(f"the projection head's hidden_dim and out_dim must be >= 1, got {self.hidden_dim} and "
                             f"{self.out_dim}")
        if self.warmup_epochs < 0 or self.eval_every < 0 or self.checkpoint_every < 0:
            raise ValueError(f"need warmup_epochs >= 0, eval_every >= 0 (0: at the end) and checkpoint_every >= 0, "
                             f"got {self.warmup_epochs}, {self.eval_every} and {self.checkpoint_every}")

    @property
    def base_lr(self) -> float:
        """``lr``, or the optimizer's default scaled with the batch: ``DEFAULT_LR[optimizer] * batch_size / 256``."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer] * self.batch_size / 256

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["knn_ks"] = list(self.knn_ks)
        d["augment"] = self.augment.to_dict()
        d["base_lr"] = self.base_lr
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        aug: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("augment", {}).items()}
        return cls(**{**d, "knn_ks": tuple(d.get("knn_ks", (10, 200))), "augment": AugmentConfig(**aug)})


@dataclass
class TrainResult:
    """What :func:`train_simclr` returns.

    Attributes:
        extractor: the trained backbone as a :class:`FeatureExtractor` (on the training device).
        history: one dict per epoch: ``epoch`` (1-based), ``seconds`` (cumulative training time), ``loss``,
            ``lr``, ``images_per_s`` (augmented views per second), ``augment_share`` (fraction of the
            step time spent augmenting) and, on evaluated epochs, ``knn<k>`` (top-1, fraction).
        knn: final kNN top-1 accuracy per k.
        epochs: epochs trained in total.
        seconds: training time in total (resumed runs included).
    """

    extractor: FeatureExtractor
    history: list[dict[str, float]]
    knn: dict[int, float]
    epochs: int
    seconds: float


def state_path_for(checkpoint: str | Path) -> Path:
    """The resumable training state written beside an extractor file: ``<stem>.state.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".state.pt")


def saved_progress(path: str | Path) -> tuple[int, int] | None:
    """``(epochs done, epochs planned)`` of the training state at ``path`` (equal when its training finished),
    or None: no state there, or a file that is not one."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch_load(path)
        return int(state["epoch"]), int(state["planned"])
    except Exception:  # not a state this module wrote: nothing to continue
        return None


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


#: Temperature of the similarity-weighted kNN reported beside the majority vote (Wu et al., 2018; the
#: SimCLR/MoCo kNN monitors whose CIFAR-10 numbers the literature quotes use T = 0.1 and k = 200).
WEIGHTED_KNN_TEMPERATURE = 0.1


def _evaluate(extractor: FeatureExtractor, data: torch.Tensor, test_images: torch.Tensor, dataset: ImageDataset,
              ks: tuple[int, ...]) -> tuple[dict[int, float], float]:
    """Majority-vote cosine kNN top-1 for each k, and the similarity-weighted kNN top-1 at the largest k."""
    train_features, test_features = extractor.embed(data), extractor.embed(test_images)
    labels = dataset.train_labels.to(train_features.device)
    knn = knn_accuracy(train_features, labels, test_features, dataset.test_labels, ks, dataset.num_classes)
    weighted = knn_accuracy(train_features, labels, test_features, dataset.test_labels, (max(ks),),
                            dataset.num_classes, temperature=WEIGHTED_KNN_TEMPERATURE)
    return knn, weighted[max(ks)]


def resized(images: torch.Tensor, size: int | None, chunk: int = 4096) -> torch.Tensor:
    """uint8 images [N, C, H, W] resized to ``size`` x ``size`` (antialiased bilinear, rounded back to uint8, in
    chunks of ``chunk`` images); the images themselves when ``size`` is None or already theirs."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    parts = [F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear", align_corners=False,
                           antialias=True).round_().clamp_(0, 255).to(torch.uint8)
             for i in range(0, images.shape[0], chunk)]
    return torch.cat(parts)


def train_simclr(dataset: ImageDataset, config: TrainConfig = TrainConfig(), device: str | torch.device = "cuda",
                 checkpoint: str | Path | None = None, resume: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a SimCLR ResNet-18 on ``dataset.train_images`` (labels unused except for kNN evaluation).

    Args:
        dataset: images uint8 [N, C, H, W], C in {1, 3}; N >= ``config.batch_size``.
        config: hyper-parameters.
        device: where the data, model and augmentation live.
        checkpoint: path of the extractor file to write at the end (``None``: write nothing). The
            resumable state goes to :func:`state_path_for` ``(checkpoint)`` every
            ``config.checkpoint_every`` epochs.
        resume: continue from that state (it must exist and have been written with the same config). Without
            it, a state there of an interrupted training (unfinished, or finished without its extractor file) is
            refused rather than overwritten.
        progress: show a tqdm bar over epochs.
        log: called with one line per evaluation (default: ``tqdm.write``).

    Raises:
        TrainingError: the loss became non-finite, the resume state is missing or mismatched, or (without
            ``resume``) an interrupted training's state would be overwritten.
    """
    state_path = state_path_for(checkpoint) if checkpoint is not None else None
    if state_path is not None and not resume:
        saved = saved_progress(state_path)
        if saved is not None and (saved[0] < saved[1] or not Path(str(checkpoint)).is_file()):
            raise TrainingError(f"{state_path} holds an interrupted training (epoch {saved[0]} of {saved[1]}): add "
                                f"--resume to continue it, or delete the file to start over")
    device = torch.device(device)
    log = log or tqdm.write
    data = resized(dataset.train_images.to(device), config.image_size)
    n, channels = data.shape[0], data.shape[1]
    bs = config.batch_size
    if channels not in (1, 3):
        raise ValueError(f"{dataset.name}: SimCLR training takes 1- or 3-channel images, got {channels}")
    if n < bs:
        raise ValueError(f"{dataset.name} has {n} training images, fewer than batch_size {bs}; lower --batch-size")
    steps_per_epoch = n // bs
    test_images = resized(dataset.test_images.to(device), config.image_size)
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    mean, std = (v.tolist() for v in channel_stats(data))

    model, optimizer = _model_and_optimizer(channels, config, device)
    identity = _dataset_identity(dataset)
    history: list[dict[str, float]] = []
    epoch, planned, elapsed = 0, config.epochs, 0.0
    if resume:
        epoch, planned, elapsed, history = _load_state(state_path, config, model, optimizer, device, identity)
        log(f"resumed from {state_path} after epoch {epoch} ({elapsed:.0f} s)")
    extractor = FeatureExtractor(model.backbone, normalize=(mean, std), in_channels=channels, batch_size=1024,
                                 amp=config.amp, input_size=config.image_size)
    step = _Step(model, optimizer, config, mean, std, device)
    timer = step.timer
    steady: list[float] = []  # epoch durations after the first of this process (compilation, autotuning)
    # fixed for the run: a time budget re-plans the epochs after each one (the first, with its compilation,
    # plans too few), and a warm-up tied to that plan made the learning rate jump at epoch 2
    warmup = min(config.warmup_epochs, config.epochs // 5) * steps_per_epoch
    first_of_process = True
    eval_seconds = 0.0
    knn: dict[int, float] = {}
    bar = tqdm(total=planned, initial=epoch, disable=not progress, desc=f"SimCLR {dataset.name}", unit="epoch")

    while epoch < planned:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, device=device)
        loss_sum = torch.zeros((), device=device)
        total_steps = planned * steps_per_epoch
        for i in range(steps_per_epoch):
            lr = lr_at(epoch * steps_per_epoch + i, total_steps, warmup, config.base_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum += step(data[perm[i * bs:(i + 1) * bs]])
        mean_loss = float(loss_sum) / steps_per_epoch  # the epoch's one host sync
        seconds = time.perf_counter() - t0
        if not math.isfinite(mean_loss):
            raise TrainingError(f"the SimCLR loss became {mean_loss} in epoch {epoch + 1}; lower the learning "
                                f"rate (--lr) or disable mixed precision (--no-amp)")
        if not first_of_process:
            steady.append(seconds)
        first_of_process = False
        elapsed += seconds
        epoch += 1
        aug_share = timer.share()
        record: dict[str, float] = {"epoch": epoch, "seconds": 0.0, "loss": mean_loss, "lr": lr,
                                    "images_per_s": 2 * bs * steps_per_epoch / seconds, "augment_share": aug_share}
        if config.time_budget is not None:
            per_epoch = (sorted(steady)[len(steady) // 2] if steady else seconds) + eval_seconds / epoch
            affordable = epoch + int(max(0.0, config.time_budget - elapsed) // per_epoch)
            planned = max(epoch, min(config.epochs, affordable))
            bar.total = planned
        if (config.eval_every and epoch % config.eval_every == 0) or epoch >= planned:
            t_eval = time.perf_counter()
            knn, weighted = _evaluate(extractor, data, test_images, dataset, config.knn_ks)
            spent = time.perf_counter() - t_eval
            eval_seconds += spent
            elapsed += spent
            record.update({f"knn{k}": acc for k, acc in knn.items()})
            record[f"knn{max(config.knn_ks)}_weighted"] = weighted
            log(f"epoch {epoch}/{planned}  {elapsed:.0f} s  loss {mean_loss:.4f}  "
                + "  ".join(f"kNN@{k} {100 * acc:.2f}%" for k, acc in knn.items())
                + f"  (weighted kNN@{max(config.knn_ks)} {100 * weighted:.2f}%)"
                + f"  {record['images_per_s']:.0f} img/s  augment {100 * aug_share:.1f}%")
        record["seconds"] = elapsed
        history.append(record)
        if state_path is not None and (epoch % max(1, config.checkpoint_every) == 0 or epoch >= planned):
            _save_state(state_path, config, model, optimizer, epoch, planned, elapsed, history, identity)
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.3f}", **{f"knn{k}": f"{100 * a:.1f}" for k, a in knn.items()})
    bar.close()
    if not knn:  # resumed a finished run: evaluate once so that the result is complete
        knn, _ = _evaluate(extractor, data, test_images, dataset, config.knn_ks)
    if checkpoint is not None:
        save_extractor(model.backbone, checkpoint, in_channels=channels, image_size=(data.shape[-2], data.shape[-1]),
                       mean=mean, std=std, meta={
                           "dataset": dataset.name, "epochs": epoch, "seconds": elapsed,
                           "knn": {str(k): v for k, v in knn.items()}, "config": config.to_dict(),
                           "device": _device_name(device), "torch": str(torch.__version__),
                       })
    extractor.meta.update({"dataset": dataset.name, "epochs": epoch, "knn": knn})
    return TrainResult(extractor, history, knn, epoch, elapsed)


def _model_and_optimizer(channels: int, config: TrainConfig,
                         device: torch.device) -> tuple[SimCLRModel, torch.optim.Optimizer]:
    model = SimCLRModel(channels, config.hidden_dim, config.out_dim).to(device)
    model = model.to(memory_format=torch.channels_last)
    if config.optimizer == "lars":
        return model, LARS(lars_param_groups(model), lr=config.base_lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, eta=config.lars_eta)
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.SGD(model.parameters(), lr=config.base_lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, **fused)
    return model, optimizer


class _Step:
    """One SimCLR step on a uint8 batch: two augmented views, one forward pass, NT-Xent, optimizer update.
    Returns the detached loss on the device (no host sync)."""

    def __init__(self, model: SimCLRModel, optimizer: torch.optim.Optimizer, config: TrainConfig,
                 mean: list[float], std: list[float], device: torch.device) -> None:
        self.model, self.optimizer, self.config = model, optimizer, config
        self.forward = torch.compile(model) if config.compile else model
        self.renderer = compiled_render() if config.compile else render
        self.amp = config.amp and device.type == "cuda"
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.timer = _StepTimer(device)

    def views(self, batch: torch.Tensor) -> torch.Tensor:
        # Both views in one call (each row of the doubled batch draws its own): half the kernel launches.
        return augment_batch(torch.cat([batch, batch]), self.config.augment, renderer=self.renderer)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        bs = batch.shape[0]
        self.timer.start()
        views = self.views(batch)
        self.timer.augmented()
        x = ((views - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            z = self.forward(x)
        loss = nt_xent_loss(z[:bs], z[bs:], self.config.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.timer.stepped()
        return loss.detach()


def measure_throughput(images: torch.Tensor, config: TrainConfig, device: str | torch.device, steps: int = 30,
                       warmup: int = 5) -> dict[str, float]:
    """Time SimCLR steps (fresh model, ``config``'s batch size, compilation and amp) on uint8 ``images``.

    Returns ``images_per_s`` (augmented views through forward + backward + update per second),
    ``step_ms`` (median), ``augment_share`` (device-time fraction spent augmenting), ``augment_images_per_s``
    (views per second of augmentation alone) and ``warmup_s`` (the first ``warmup`` steps, compilation
    included).
    """
    device = torch.device(device)
    data = images.to(device)
    bs = config.batch_size
    torch.manual_seed(config.seed)
    mean, std = (v.tolist() for v in channel_stats(data))
    model, optimizer = _model_and_optimizer(data.shape[1], config, device)
    step = _Step(model, optimizer, config, mean, std, device)

    def batches(k: int) -> list[torch.Tensor]:
        return [data[torch.randint(0, data.shape[0], (bs,), device=device)] for _ in range(k)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    for b in batches(warmup):
        step(b)
    sync()
    warmup_s = time.perf_counter() - t0
    step.timer.share()
    work = batches(steps)
    sync()
    t0 = time.perf_counter()
    for b in work:
        step(b)
    sync()
    seconds = time.perf_counter() - t0
    share = step.timer.share()
    sync()
    t0 = time.perf_counter()
    for b in work:
        step.views(b)
    sync()
    aug_seconds = time.perf_counter() - t0
    return {"batch_size": bs, "compile": config.compile, "images_per_s": 2 * bs * steps / seconds,
            "step_ms": 1000 * seconds / steps, "augment_share": share,
            "augment_images_per_s": 2 * bs * steps / aug_seconds, "warmup_s": warmup_s}


class _StepTimer:
    """Device time of augmentation vs the whole step, from CUDA events read once per epoch (host clock on
    CPU, where work is synchronous)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def _mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        self.marks.append([self._mark()])

    def augmented(self) -> None:
        self.marks[-1].append(self._mark())

    def stepped(self) -> None:
        self.marks[-1].append(self._mark())

    def share(self) -> float:
        """Fraction of step time spent augmenting since the last call; resets."""
        aug = total = 0.0
        for a, b, c in self.marks:
            if self.cuda:
                c.synchronize()
                aug += a.elapsed_time(b)
                total += a.elapsed_time(c)
            else:
                aug += b - a
                total += c - a
        self.marks = []
        return aug / total if total > 0 else 0.0


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


_RESUME_KEYS = ("optimizer", "batch_size", "lr", "momentum", "weight_decay", "lars_eta", "temperature", "hidden_dim",
                "out_dim", "seed", "augment", "epochs", "time_budget", "warmup_epochs", "image_size")
#: Settings added after states were first written, with the value those older states were trained with.
_ADDED_KEYS = {"optimizer": "sgd", "lars_eta": 1e-3, "image_size": None}


def _dataset_identity(dataset: ImageDataset) -> dict[str, Any]:
    """What a resumed training checks it trains on the same images: the training images' shape and a hash of
    every k-th image (about 512 of them: a few milliseconds, and any other dataset differs), with the dataset's
    name for the message."""
    images = dataset.train_images
    every = max(1, images.shape[0] // 512)
    sample = images[::every].contiguous().cpu().numpy().tobytes()
    return {"name": dataset.name, "shape": list(images.shape), "sample_sha1": hashlib.sha1(sample).hexdigest()[:16]}


def _save_state(path: Path, config: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                epoch: int, planned: int, elapsed: float, history: list[dict[str, float]],
                identity: dict[str, Any]) -> None:
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    atomic_torch_save({
        "format": STATE_FORMAT, "config": config.to_dict(), "dataset": identity, "epoch": epoch, "planned": planned,
        "elapsed": elapsed, "history": history, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "rng": rng,
    }, path)


def _load_state(path: Path | None, config: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                device: torch.device, identity: dict[str, Any]) -> tuple[int, int, float, list[dict[str, float]]]:
    if path is None or not path.is_file():
        raise TrainingError(f"nothing to resume: no training state at {path}; start without --resume")
    try:
        state = torch_load(path, map_location=device, verify=True)
    except Exception as exc:
        raise TrainingError(f"cannot read training state {path}: {exc}; delete it and start without --resume") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path} is not a SimCLR training state; delete it and start without --resume")
    saved, now = {**_ADDED_KEYS, **state["config"]}, config.to_dict()
    changed = [k for k in _RESUME_KEYS if saved.get(k) != now.get(k)]
    if changed:
        raise TrainingError(f"cannot resume {path}: it was trained with " + ", ".join(
            f"{k}={saved.get(k)!r}" for k in changed) + "; pass the same settings or start without --resume")
    trained_on = state.get("dataset")  # None in states written before it was kept
    differ = [k for k in ("shape", "sample_sha1") if trained_on is not None and trained_on.get(k) != identity[k]]
    if differ:  # the name alone may differ (a renamed copy of the same file)
        assert trained_on is not None
        raise TrainingError(f"cannot resume {path}: it was trained on other images (" + ", ".join(
            f"{k} {trained_on.get(k)} then, {identity[k]} now" for k in ("name", *differ)) + "); give the same "
            "dataset, or start without --resume")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["cpu"].cpu())
    if "cuda" in state["rng"] and device.type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["cuda"].cpu())
    return int(state["epoch"]), int(state["planned"]), float(state["elapsed"]), list(state["history"])
