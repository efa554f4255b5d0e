"""Process-level pieces of the training loop: the process group, the budget, signals, the log.

``init_process`` joins a ``torchrun`` group (NCCL on GPUs, gloo on CPUs) or describes the single
process; ``Budget`` turns ``--max-minutes`` into a stop decision and a number of steps that fit;
``agree`` makes such decisions collective under DDP (a process that stopped alone would hang the
others in their next all-reduce); ``stop_on_signals`` turns SIGINT / SIGTERM into a clean stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from hrsam.modeling.interactive import HRSAMInteractive

# Seconds kept free at the end of the budget for the last checkpoint and the exports.
FINAL_RESERVE_S = 20.0


@dataclass(frozen=True)
class Process:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_process(device: str | None) -> Process:
    """Join the ``torchrun`` process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        target = torch.device("cuda", local) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(target)
        return Process(dist.get_rank(), world, target)
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    return Process(0, 1, torch.device(device or ("cuda" if cuda else "cpu")))


def enable_gradient_checkpointing(model: HRSAMInteractive) -> None:
    """Recompute each encoder block in the backward instead of keeping its activations.

    The block's ``forward`` is wrapped on the instance, so parameter names (and checkpoints) are
    unchanged.
    """
    for block in model.encoder.blocks:
        original = block.forward

        def forward(*args: object, _original: Callable = original) -> torch.Tensor:
            return checkpoint(_original, *args, use_reentrant=False)

        block.forward = forward


def step_generators(seed: int, step: int, rank: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(CPU, device) generators of one step, seeded by (seed, step, rank) only."""
    value = int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)
    cpu = torch.Generator().manual_seed(value)
    return cpu, (torch.Generator(device).manual_seed(value) if device.type == "cuda" else cpu)


class Budget:
    """The wall-clock budget from ``started`` (epoch seconds): when to stop, how many steps fit.

    ``step_s`` is a running average of the seconds per step (0 until the first step ends).
    """

    def __init__(self, started: float, minutes: float | None) -> None:
        self.deadline = None if minutes is None else started + 60.0 * minutes
        self.step_s = 0.0

    def observe(self, seconds: float) -> None:
        """Fold one step's duration into ``step_s`` (the first step, with its set-up, counts fully)."""
        self.step_s = seconds if self.step_s == 0 else 0.8 * self.step_s + 0.2 * seconds

    def exhausted(self, now: float) -> bool:
        return self.deadline is not None and now + 1.5 * self.step_s + FINAL_RESERVE_S > self.deadline

    def steps_left(self, now: float, step_s: float) -> int:
        """Steps of ``step_s`` seconds that still fit before the final reserve."""
        if self.deadline is None or step_s <= 0:
            return 2**62
        return max(0, int((self.deadline - FINAL_RESERVE_S - now) / step_s))


def agree(flag: bool, process: Process) -> bool:
    """True on every process when it is True on any (stop decisions must be collective under DDP)."""
    if process.world == 1:
        return flag
    value = torch.tensor([float(flag)], device=process.device)
    dist.all_reduce(value)
    return bool(value.item() > 0)


class Logger:
    """Rank 0's log: stdout and ``train.log``."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        print(message, flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as file:
            file.write(message + "\n")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[bool]]:
    """A flag set by SIGINT / SIGTERM (the loop then checkpoints and exits cleanly)."""
    flag = [False]
    previous = {}

    def handler(signum: int, _frame: object) -> None:
        flag[0] = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: no handler, the budget still applies
            pass
    try:
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
