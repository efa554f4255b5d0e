"""Training checkpoints: the full resume state, the portable weights, the fp16 release file.

* ``state.pt`` (``save_state`` / ``load_state``): model, optimizer, GradScaler, step, schedule length
  and the run's key settings. Everything random in a step is derived from (seed, step, rank), so
  resuming from it continues bit-exactly. Written atomically (temporary file, then rename): an
  interruption never leaves a broken checkpoint.
* ``weights_fp32.safetensors`` and ``model_fp16.safetensors`` (``save_weights``): our safetensors
  format (``hrsam.checkpoint``: every loader reads them, casting to the model's dtype) plus the
  training progress in the metadata. The fp16 file is the release; either one resumes a run on
  another machine (``load_weights``) with fresh optimizer moments and a short re-warm-up, so not
  bit-exactly (and from fp16 with weights rounded to half precision).

``split_file`` cuts a file into parts of at most N MiB (``cat NAME.part-* > NAME`` joins them),
for transfers with a per-file size limit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hrsam.checkpoint import FORMAT, FORMAT_VERSION
from hrsam.modeling.configs import ModelConfig
from hrsam.modeling.interactive import HRSAMInteractive

PORTABLE_KEY = "hrsam_train"


@dataclass(frozen=True)
class Progress:
    """Where a run is: its kind, step, planned length and the settings a resume must share."""

    kind: str
    step: int
    total_steps: int
    samples_per_step: int
    seed: int

    def check_resumable_by(self, kind: str, samples_per_step: int, seed: int, path: Path, exact: bool) -> None:
        """Errors for resuming a run of another kind, batch or seed (one line naming the file)."""
        if kind != self.kind:
            raise ValueError(f"{path} is a {self.kind} run; it cannot resume a {kind} run")
        if exact and (samples_per_step, seed) != (self.samples_per_step, self.seed):
            raise ValueError(
                f"{path} was trained with {self.samples_per_step} samples per step (batch x processes) and seed "
                f"{self.seed}; this run has {samples_per_step} and {seed}: resume with the same settings"
            )


def _check_config(saved: dict, model: HRSAMInteractive, path: Path) -> None:
    if ModelConfig.from_dict(saved) != model.config:
        raise ValueError(
            f"{path} holds model {saved.get('name')!r} with another configuration than this run's "
            f"{model.config.name!r}: resume with --model {saved.get('name')} or start a new run"
        )


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def save_state(path: Path, model: HRSAMInteractive, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None, progress: Progress) -> None:
    state = {
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "progress": progress.__dict__,
    }
    _atomic(path, lambda target: torch.save(state, target))


def load_state(path: Path, model: HRSAMInteractive, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None) -> Progress:
    """Restore a ``save_state`` file into ``model``, ``optimizer`` and ``scaler``."""
    if not path.is_file():
        raise FileNotFoundError(f"resume file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - one line naming the file
        raise ValueError(f"{path} is not a readable training state ({str(error).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or not {"config", "model", "optimizer", "progress"} <= state.keys():
        raise ValueError(f"{path} is not a training state written by hrsam.train")
    _check_config(state["config"], model, path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return Progress(**state["progress"])


def save_weights(path: Path, model: HRSAMInteractive, progress: Progress, dtype: torch.dtype) -> None:
    """The weights in ``dtype`` (float tensors only), with config and progress in the metadata."""
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu()
               for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "hrsam_config": json.dumps(model.config.to_dict()), PORTABLE_KEY: json.dumps(progress.__dict__)}
    _atomic(path, lambda target: save_file(tensors, str(target), metadata=metadata))


def load_weights(path: Path, model: HRSAMInteractive) -> Progress:
    """Load the weights of a ``save_weights`` file into ``model``; return its progress."""
    if not path.is_file():
        raise FileNotFoundError(f"resume file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 - not a dict
    except Exception as error:  # noqa: BLE001 - one line naming the file
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None
    if PORTABLE_KEY not in metadata or "hrsam_config" not in metadata:
        raise ValueError(f"{path} holds no training progress: resume from state.pt or a run's weights_fp32 / "
                         "model_fp16 file (or pass it as --init to start a new run from its weights)")
    _check_config(json.loads(metadata["hrsam_config"]), model, path)
    model.load_state_dict(tensors)  # casts to the model's dtype
    return Progress(**json.loads(metadata[PORTABLE_KEY]))


def split_file(path: Path, part_mib: int) -> list[Path]:
    """Cut ``path`` into ``path.part-00``, ... of at most ``part_mib`` MiB and remove it.

    A file already small enough is left whole; returns the files that hold the content.
    """
    limit = part_mib * 2**20
    if path.stat().st_size <= limit:
        return [path]
    parts = []
    with open(path, "rb") as source:
        for index, block in enumerate(iter(lambda: source.read(limit), b"")):
            part = path.with_name(f"{path.name}.part-{index:02d}")
            part.write_bytes(block)
            parts.append(part)
    path.unlink()
    return parts
