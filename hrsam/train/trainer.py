"""The training loop shared by distillation and click fine-tuning.

One process per GPU under ``torchrun`` (DDP; ``DistributedSampler`` shards through
``batches.ResumableOrder``), or one process on one GPU or the CPU. Per step: the warm-up + poly
learning rate (times each group's layer-decay scale), the objective under autocast (bf16, or fp16
with a GradScaler), gradient clipping, AdamW. Randomness of step t comes from generators seeded by
(seed, t, rank) and data items from their (epoch, index) keys, so a run resumed from ``state.pt``
repeats exactly what an uninterrupted run does.

Checkpoints: ``state.pt`` every ``checkpoint_every`` steps, on SIGINT / SIGTERM and before the
``max_minutes`` budget runs out (the loop stops when the next step and the final save would not
fit); at the end also ``weights_fp32.safetensors`` (portable resume), ``model_fp16.safetensors``
(release), the metrics CSV and the loss plot. ``fit_steps_to_budget`` measures the step time
after a few steps and shortens the schedule so that it ends (learning rate decayed) in the budget.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from hrsam.modeling.interactive import HRSAMInteractive
from hrsam.train.batches import ResumableOrder, normalise, worker_init
from hrsam.train.metrics_log import MetricsLog, plot
from hrsam.train.optim import Schedule, make_optimizer, param_groups, set_lr
from hrsam.train.runtime import (
    Budget,
    Logger,
    Process,
    agree,
    enable_gradient_checkpointing,
    init_process,
    step_generators,
    stop_on_signals,
)
from hrsam.train.state import Progress, load_state, load_weights, save_state, save_weights, split_file

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Steps timed to fit the schedule to the budget, after skipping the first (compilation, warm-up).
CALIBRATION_SKIP, CALIBRATION_STEPS = 10, 20
# An objective maps (batch on the device, (CPU, device) generators) to (loss, detached stats).
Objective = Callable[[dict[str, Tensor], tuple[torch.Generator, torch.Generator]], tuple[Tensor, dict]]


@dataclass
class LoopSettings:
    """Everything the loop needs besides the model, the objective and the data (see the CLI help)."""

    kind: str
    out: Path
    steps: int
    batch_size: int
    lr: float = 1e-4
    warmup_steps: int = 100
    warmup_start: float = 1e-6
    poly_power: float = 1.0
    layer_decay: float = 0.9
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    precision: str = "bf16"
    clip_grad: float | None = 1.0
    gradient_checkpointing: bool = False
    max_minutes: float | None = None
    fit_steps_to_budget: bool = False
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    workers: int = 4
    device: str | None = None
    state_dir: Path | None = None
    part_mib: int | None = None
    progress_bar: bool = True
    rewarmup_steps: int = 50
    stop_at: int | None = None
    started: float = field(default_factory=time.time)

    @property
    def state_path(self) -> Path:
        return (self.state_dir or self.out) / "state.pt"


def _loader(items: Dataset, settings: LoopSettings, process: Process, shuffle: bool, start: int) -> DataLoader:
    order = ResumableOrder(len(items), process.rank, process.world, shuffle, settings.seed, start)
    workers = settings.workers
    return DataLoader(items, batch_size=settings.batch_size, sampler=order, num_workers=workers,
                      worker_init_fn=worker_init if workers else None, pin_memory=process.device.type == "cuda",
                      drop_last=True, persistent_workers=workers > 0, prefetch_factor=2 if workers else None)


def _resume(path: Path, settings: LoopSettings, model: HRSAMInteractive, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler | None, samples_per_step: int) -> tuple[Progress, int]:
    """Restore a run; returns its progress and the step from which a re-warm-up starts (or -1).

    ``state.pt`` continues the same schedule exactly. A weights file starts a new leg from its step:
    fresh optimizer moments, a short re-warm-up, and a schedule that ends at this run's ``--steps``.
    """
    exact = path.suffix != ".safetensors"
    progress = load_state(path, model, optimizer, scaler) if exact else load_weights(path, model)
    progress.check_resumable_by(settings.kind, samples_per_step, settings.seed, path, exact)
    if exact:
        return progress, -1
    if progress.step >= settings.steps:  # a new leg: its schedule runs up to this run's --steps
        raise ValueError(f"{path} is at step {progress.step} already: pass --steps above it to train further")
    return replace(progress, total_steps=settings.steps, samples_per_step=samples_per_step), progress.step


def train(settings: LoopSettings, model: HRSAMInteractive, make_objective: Callable[[HRSAMInteractive], nn.Module],
          trainable: nn.Module, items: Dataset, shuffle: bool, resume: Path | None = None) -> Progress:
    """Train ``trainable`` (the model or its encoder) on ``items``; returns where the run ended."""
    if settings.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {settings.precision!r}; choose one of {sorted(PRECISIONS)}")
    process = init_process(settings.device)
    if settings.precision == "fp16" and process.device.type != "cuda":
        raise ValueError("fp16 training needs a CUDA device (use bf16 or fp32 on the CPU)")
    log = Logger(settings.out / "train.log", process.main)
    if process.device.type == "cuda":  # the float32 parts (the ops' reference backwards) may use TF32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model.to(process.device).train()
    if settings.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    objective = make_objective(model).to(process.device)
    groups = param_groups(trainable, model, settings.lr, settings.layer_decay, settings.weight_decay)
    optimizer = make_optimizer(groups, settings.betas, process.device)
    scaler = torch.amp.GradScaler("cuda") if settings.precision == "fp16" else None
    samples_per_step = settings.batch_size * process.world
    progress, restart = Progress(settings.kind, 0, settings.steps, samples_per_step, settings.seed), -1
    if resume is not None:
        progress, restart = _resume(resume, settings, model, optimizer, scaler, samples_per_step)
        log(f"resumed {resume} at step {progress.step} of {progress.total_steps}"
            + ("" if restart < 0 else f" (fresh optimizer, {settings.rewarmup_steps}-step re-warm-up)"))
    wrapped = DistributedDataParallel(objective) if process.world > 1 else objective
    loader = iter(_loader(items, settings, process, shuffle, progress.step * settings.batch_size))
    log(f"{settings.kind}: {model.config.name} on {process.device} x {process.world}, {samples_per_step} samples/step, "
        f"steps {progress.step} -> {progress.total_steps}, precision {settings.precision}")
    return _run(settings, process, model, wrapped, optimizer, scaler, loader, progress, restart, log)


def _run(settings: LoopSettings, process: Process, model: HRSAMInteractive, objective: nn.Module,
         optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, loader: Iterator,
         progress: Progress, restart: int, log: Logger) -> Progress:
    budget = Budget(settings.started, settings.max_minutes)
    metrics = MetricsLog(settings.out / "metrics.csv") if process.main else None
    step, total = progress.step, progress.total_steps
    sums: dict[str, Tensor] = {}
    timer = {"log": time.perf_counter(), "calibrate": 0.0, "count": step}
    calibrate_at = step + CALIBRATION_SKIP
    bar = tqdm(total=total, initial=step, unit="step", disable=not (process.main and settings.progress_bar))
    with stop_on_signals() as stopped, bar:
        while step < total:
            reason = _stop_reason(settings, step, stopped[0], budget, process)
            if reason:
                log(f"stopping at step {step} of {total}: {reason}")
                break
            if step == calibrate_at:
                timer["calibrate"] = time.perf_counter()
            started = time.perf_counter()
            schedule = Schedule(settings.lr, total, settings.warmup_steps, settings.warmup_start,
                                settings.poly_power, restart, settings.rewarmup_steps if restart >= 0 else 0)
            rate = schedule(step)
            set_lr(optimizer, rate)
            loss, stats = _train_step(settings, process, model, objective, optimizer, scaler, next(loader), step)
            budget.observe(time.perf_counter() - started)
            step += 1
            bar.update(1)
            for key, value in {"loss": loss, **stats}.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float()  # on the device: no sync per step
            if step == calibrate_at + CALIBRATION_STEPS and settings.fit_steps_to_budget:
                seconds = (time.perf_counter() - timer["calibrate"]) / CALIBRATION_STEPS
                total = bar.total = _fit(total, step, seconds, budget, settings, process, log)
            if step % settings.log_every == 0 or step == total:
                _log_row(metrics, log, sums, step, total, rate, settings, timer, process)
                sums = {}
            if step % settings.checkpoint_every == 0 and process.main:
                reached = replace(progress, step=step, total_steps=total)
                save_state(settings.state_path, model, optimizer, scaler, reached)
    final = replace(progress, step=step, total_steps=total)
    if process.main:
        _finish(settings, model, optimizer, scaler, final, log)
    return final


def _stop_reason(settings: LoopSettings, step: int, signalled: bool, budget: Budget, process: Process) -> str:
    """Why the run stops before ``step`` ('' to go on); the budget decision is collective."""
    if settings.stop_at is not None and step >= settings.stop_at:
        return "--stop-at reached"
    if agree(signalled or budget.exhausted(time.time()), process):
        return "signal received" if signalled else "time budget reached"
    return ""


def _train_step(settings: LoopSettings, process: Process, model: HRSAMInteractive, objective: nn.Module,
                optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                batch: dict[str, Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
    """One optimisation step on ``batch``; returns the loss and the objective's statistics."""
    batch = {key: value.to(process.device, non_blocking=True) for key, value in batch.items()}
    batch["image"] = normalise(batch["image"], batch["region"])
    dtype = PRECISIONS[settings.precision]
    context = torch.autocast(process.device.type, dtype) if dtype else contextlib.nullcontext()
    with context:
        loss, stats = objective(batch, step_generators(settings.seed, step, process.rank, process.device))
    _backward_and_step(loss, optimizer, scaler, model, settings.clip_grad)
    return loss.detach(), stats


def _backward_and_step(loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                       model: nn.Module, clip: float | None) -> None:
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _fit(total: int, step: int, step_s: float, budget: Budget, settings: LoopSettings, process: Process,
         log: Logger) -> int:
    """The schedule length that ends within the budget at ``step_s`` per step (at most ``settings.steps``)."""
    fitted = min(settings.steps, step + budget.steps_left(time.time(), step_s))
    if process.world > 1:  # every process must use rank 0's length
        value = torch.tensor([fitted], device=process.device)
        torch.distributed.broadcast(value, 0)
        fitted = int(value.item())
    if fitted != total:
        log(f"{step_s:.3f} s/step measured: schedule set to {fitted} steps to fit the time budget")
    return fitted


def _log_row(metrics: MetricsLog | None, log: Logger, sums: dict, step: int, total: int, rate: float,
             settings: LoopSettings, timer: dict, process: Process) -> None:
    now = time.perf_counter()
    count = step - timer["count"]
    values = {key: float(value) / max(1, count) for key, value in sums.items()}
    timer["count"] = step
    if not math.isfinite(values.get("loss", 0.0)):
        raise FloatingPointError(f"the loss is {values['loss']} at step {step}: lower --lr or use --precision fp32")
    seconds = (now - timer["log"]) / max(1, count)
    timer["log"] = now
    row = {"step": step, "elapsed_s": round(time.time() - settings.started, 1), "lr": rate,
           **{key: round(value, 6) for key, value in values.items()},
           "step_s": round(seconds, 4), "samples_per_s": round(settings.batch_size * process.world / seconds, 1)}
    if metrics is not None:
        metrics.write(row)
    log(" ".join(f"{key}={value}" for key, value in row.items()) + f" total={total}")


def _finish(settings: LoopSettings, model: HRSAMInteractive, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler | None, progress: Progress, log: Logger) -> None:
    """Final checkpoint, portable weights, fp16 release file, loss plot; split for transfer if asked."""
    save_state(settings.state_path, model, optimizer, scaler, progress)
    outputs = [settings.out / "weights_fp32.safetensors", settings.out / "model_fp16.safetensors"]
    save_weights(outputs[0], model, progress, torch.float32)
    save_weights(outputs[1], model, progress, torch.float16)
    if (settings.out / "metrics.csv").is_file():
        log(plot(settings.out / "metrics.csv", settings.out / "loss.png"))
    for path in outputs:
        size = path.stat().st_size / 2**20
        parts = split_file(path, settings.part_mib) if settings.part_mib else [path]
        note = "" if len(parts) == 1 else f" in {len(parts)} parts (join: cat {path.name}.part-* > {path.name})"
        log(f"wrote {path} ({size:.1f} MiB){note}")
    log(f"state {settings.state_path} at step {progress.step} of {progress.total_steps}")
