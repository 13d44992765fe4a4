"""The training loop: one code path for a CPU, one GPU, many GPUs and many nodes (Accelerate).

Read top to bottom: build the loaders, prepare with Accelerate, resume from the last epoch
checkpoint if there is one, then for each epoch train, evaluate, log and checkpoint. A run that
finished (``done.json``) is not repeated; a run killed at any point resumes from its last
checkpoint and ends with the weights an uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader

from noisytail.config.training import TrainConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.samplers import build_sampler
from noisytail.metrics import classification_report
from noisytail.models.network import NoisyTailNet, save_network
from noisytail.progress import progress
from noisytail.tracking import RunTracker
from noisytail.training.checkpoints import (
    claim_run_dir,
    copy_network,
    latest_checkpoint,
    run_identity,
    save_checkpoint,
)


def learning_rate(step: int, steps_per_epoch: int, peak: float, config: TrainConfig) -> float:
    """Linear warm-up to ``peak``, then step decay at the milestones or cosine to ``min_lr``."""
    epoch = step / steps_per_epoch
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if config.schedule == "step":
        return peak * config.gamma ** sum(epoch >= m for m in config.milestones)
    if config.schedule == "cosine":
        span = max(config.epochs - config.warmup_epochs, 1e-8)
        progress = min((epoch - config.warmup_epochs) / span, 1.0)
        return config.min_lr + (peak - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"train.schedule must be 'step' or 'cosine', got {config.schedule!r}")


def build_optimizer(params: Sequence[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=0.0, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=0.0, weight_decay=config.weight_decay)
    raise ValueError(f"train.optimizer must be 'sgd' or 'adamw', got {config.optimizer!r}")


def make_accelerator(config: TrainConfig) -> Accelerator:
    return Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, accelerator: Accelerator, num_classes: int
) -> dict[str, float]:
    """Top-1 and mean class error over the whole loader, exact under several processes."""
    model.eval()
    predictions, targets = [], []
    for images, labels, _ in loader:
        with accelerator.autocast():
            logits = model(images)
        pred, target = accelerator.gather_for_metrics((logits.argmax(1), labels))
        predictions.append(pred.cpu())
        targets.append(target.cpu())
    report = classification_report(
        torch.cat(predictions).numpy(), torch.cat(targets).numpy(), num_classes
    )
    return {f"val_{k}": v for k, v in report.items()}


def fit(
    model: NoisyTailNet,
    train_set: ImageDataset,
    val_set: ImageDataset | None,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    classes: tuple[str, ...],
    seed: int = 0,
    frozen: Sequence[nn.Module] = (),
    tracker: RunTracker | None = None,
    accelerator: Accelerator | None = None,
    fingerprint: str = "",
) -> dict:
    """Train ``model``; write ``model.safetensors`` and ``done.json`` (history) to ``out_dir``.

    ``fingerprint`` identifies the run's inputs: checkpoints left in ``out_dir`` by a run with
    another fingerprint are discarded instead of resumed.
    """
    out_dir = Path(out_dir)
    accelerator = accelerator or make_accelerator(config)
    checkpoints, done_file = out_dir / "checkpoints", out_dir / "done.json"
    best_file = out_dir / "model_best.safetensors"  # kept whenever there is a val split
    selecting = config.select == "best_val" and val_set is not None
    if accelerator.is_main_process:
        inputs = fingerprint or json.dumps(asdict(config), sort_keys=True)
        claim_run_dir(out_dir, run_identity(inputs, accelerator.num_processes))
    accelerator.wait_for_everyone()
    if done_file.exists():  # a finished run is not repeated
        return json.loads(done_file.read_text())

    # Data: our sampler already gives each rank its own share, so the training loader is not
    # passed through accelerator.prepare; the evaluation loader is (for gather_for_metrics).
    sampler = build_sampler(
        config.sampler, train_set.labels.numpy(), num_replicas=accelerator.num_processes,
        rank=accelerator.process_index, seed=seed,
    )  # fmt: skip
    train_loader = DataLoader(
        train_set, batch_size=config.batch_size, sampler=sampler, drop_last=True,
        num_workers=config.workers, pin_memory=accelerator.device.type == "cuda",
    )  # fmt: skip
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"train.batch_size {config.batch_size} x {accelerator.num_processes} process(es) is "
            f"larger than the {len(train_set)} training samples"
        )
    peak_lr = config.base_lr * config.batch_size * accelerator.num_processes / 256

    # Model and optimiser: frozen parts get no gradients and stay in eval mode (BN stats fixed).
    for module in frozen:
        module.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    val_loader = None
    if val_set is not None:
        val_loader = accelerator.prepare(
            DataLoader(val_set, batch_size=2 * config.batch_size, num_workers=config.workers)
        )
    mixup = None
    if config.mixup > 0 or config.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=config.mixup, cutmix_alpha=config.cutmix,
            label_smoothing=config.label_smoothing, num_classes=len(classes),
        )  # fmt: skip
        criterion: nn.Module = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    # Resume: model, optimiser and RNG states of the last finished epoch.
    start_epoch, history = 0, []
    latest = latest_checkpoint(checkpoints)
    if latest is not None:
        accelerator.load_state(str(latest))
        history = json.loads((latest / "history.json").read_text())
        start_epoch = len(history)
        accelerator.print(f"resuming from {latest} (epoch {start_epoch} of {config.epochs})")

    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        model.train()
        for module in frozen:
            module.eval()
        loss_sum, seen, started = torch.zeros((), device=accelerator.device), 0, time.perf_counter()
        bar = progress(
            train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False,
            enabled=accelerator.is_local_main_process,
        )  # fmt: skip
        for step_in_epoch, (images, labels, _) in enumerate(bar):
            lr = learning_rate(epoch * steps_per_epoch + step_in_epoch, steps_per_epoch, peak_lr,
                               config)  # fmt: skip
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, targets = images.to(accelerator.device), labels.to(accelerator.device)
            if mixup is not None:
                images, targets = mixup(images, targets)
            with accelerator.autocast():
                loss = criterion(model(images), targets)
            accelerator.backward(loss)
            if config.grad_clip > 0:
                accelerator.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * len(images)
            seen += len(images)
            if step_in_epoch % 10 == 0:  # .item() waits for the device: not on every step
                rate = seen * accelerator.num_processes / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4g}", img_s=f"{rate:.0f}")

        metrics = {
            "train_loss": accelerator.reduce(loss_sum / seen, "mean").item(),
            "lr": lr,
            "epoch_seconds": time.perf_counter() - started,
        }
        if val_loader is not None:
            metrics.update(evaluate(model, val_loader, accelerator, len(classes)))
        history.append({"epoch": epoch + 1, **metrics})
        accelerator.print(
            f"epoch {epoch + 1}/{config.epochs} "
            + " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        )
        if tracker is not None:
            tracker.log_metrics(metrics, step=epoch + 1)
        best = val_loader is not None and selected_epoch(history) == epoch + 1
        if best and accelerator.is_main_process:
            save_network(accelerator.unwrap_model(model), best_file, classes)
        if epoch + 1 in config.snapshot_epochs and accelerator.is_main_process:
            snapshot = out_dir / f"model_epoch_{epoch + 1}.safetensors"
            save_network(accelerator.unwrap_model(model), snapshot, classes)
        save_checkpoint(accelerator, checkpoints, epoch, history, config.keep_checkpoints)

    chosen = selected_epoch(history) if selecting else len(history)
    result = {"history": history, "final": history[-1] if history else {},
              "selected_epoch": chosen, "config": asdict(config),
              "num_processes": accelerator.num_processes}  # fmt: skip
    if accelerator.is_main_process:
        if selecting and chosen != len(history):
            copy_network(best_file, out_dir / "model.safetensors")
        else:
            save_network(accelerator.unwrap_model(model), out_dir / "model.safetensors", classes)
        done_file.write_text(json.dumps(result, indent=1))
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # forget this model, so a later fit's save_state holds only its own
    return result


def selected_epoch(history: list[dict]) -> int:
    """The epoch (1-based) of the lowest validation mean class error; the later one on a tie."""
    return min(history, key=lambda h: (h["val_mean_class_error"], -h["epoch"]))["epoch"]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Python, numpy and torch RNGs (model initialisation, dropout, mixup); with
    ``deterministic``, also the kernels: on a GPU, cuDNN's autotuner and atomics-based kernels
    make two runs of one seed differ. The deterministic ones cost speed (often 10-30% on
    convolutions) and an op without one raises an error naming it. CPU runs are deterministic
    already."""
    from accelerate.utils import set_seed

    set_seed(seed, deterministic=deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it set
        torch.backends.cudnn.benchmark = False
