"""AdamW with layer-wise learning-rate decay, and the warm-up + poly schedule (docs/MODEL.md, training).

Layer ids follow the encoder's depth: patch and position embeddings are layer 0, block i is layer
i + 1, a Cycle-scan belongs to the block it precedes (HRSAM++'s multi-scale scans and fusion norms
to the block they follow), and the neck and the prompt decoder are layer depth + 1 (full rate).
Group j's rate is ``lr * layer_decay ** (depth + 1 - j)``. Biases, norms, embeddings, padding
tokens and the scan's A_log / D / gamma get no weight decay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from hrsam.modeling.interactive import HRSAMInteractive

_NO_DECAY = re.compile(r"(^|\.)(bias|pos_embed|padding|padding_kv|A_log|D|gamma|dt_bias)$|norm")


def layer_id(name: str, depth: int, stage_ends: tuple[int, ...]) -> int:
    """The layer a parameter of ``HRSAMInteractive`` (or of its encoder, without the prefix) belongs to."""
    name = name.removeprefix("encoder.")
    if name.startswith(("patch_embed", "pos_embed")):
        return 0
    if match := re.match(r"blocks\.(\d+)\.", name):
        return int(match.group(1)) + 1
    if match := re.match(r"scans\.(\d+)\.", name):
        return stage_ends[int(match.group(1))] + 1
    if match := re.match(r"(ms_scans|fusion_norms)\.(\d+)\.", name):
        return stage_ends[int(match.group(2))] + 1
    return depth + 1


def param_groups(module: nn.Module, model: HRSAMInteractive, lr: float, layer_decay: float,
                 weight_decay: float) -> list[dict]:
    """AdamW groups of ``module``'s trainable parameters (the model or its encoder) with ``lr_scale``."""
    config = model.config.encoder
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        layer = layer_id(name, config.depth, config.stage_ends)
        decay = parameter.ndim > 1 and not _NO_DECAY.search(name)
        key = (layer, decay)
        if key not in groups:
            scale = layer_decay ** (config.depth + 1 - layer)
            groups[key] = {"params": [], "lr_scale": scale, "lr": lr * scale,
                           "weight_decay": weight_decay if decay else 0.0, "layer": layer}
        groups[key]["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up from ``warmup_start`` to ``lr`` over ``warmup_steps``, then poly decay to 0.

    ``restart_step`` / ``rewarmup_steps``: a second short warm-up after resuming with fresh
    optimizer moments (portable resume), so the first updates are not full-size sign steps.
    """

    lr: float
    total_steps: int
    warmup_steps: int
    warmup_start: float = 1e-6
    power: float = 1.0
    restart_step: int = 0
    rewarmup_steps: int = 0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            rate = self.warmup_start + (self.lr - self.warmup_start) * step / self.warmup_steps
        else:
            span = max(1, self.total_steps - self.warmup_steps)
            rate = self.lr * max(0.0, 1 - (step - self.warmup_steps) / span) ** self.power
        since_restart = step - self.restart_step
        if 0 <= since_restart < self.rewarmup_steps:
            rate *= (since_restart + 1) / (self.rewarmup_steps + 1)
        return rate


def make_optimizer(groups: list[dict], betas: tuple[float, float], device: torch.device) -> torch.optim.AdamW:
    """AdamW (the fused CUDA kernel on GPUs: one launch for all parameters)."""
    return torch.optim.AdamW(groups, betas=betas, fused=device.type == "cuda")


def set_lr(optimizer: torch.optim.Optimizer, rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rate * group["lr_scale"]
