"""Checkpoints: our own safetensors files, and the authors' published (mmengine) checkpoints.

Our format: a ``.safetensors`` file with the model's state dict and, in its metadata, the model
config as JSON (``hrsam_config``), so ``load_checkpoint`` rebuilds the right model without
being told which one it is.

The authors' format: an mmengine checkpoint ``{"meta": ..., "state_dict": {...}}`` whose keys are
``backbone.*`` (HRSAMViT / HRSAMPlusPlusViT), ``neck.*`` (their SAMPromptEncoder) and
``decode_head.*`` (their SAMDecoder), see their ``configs/hrsam/*.py``. ``AUTHOR_KEY_RULES`` is the
explicit table from their names to ours; ``load_authors_checkpoint`` applies it and reports what is
missing, unexpected and ignored (loss modules have no weights we use).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from hrsam.modeling.configs import CONFIGS, ModelConfig, get_config
from hrsam.modeling.cycle_scan import AUTHOR_KEY_MAP as SCAN_KEY_MAP
from hrsam.modeling.interactive import HRSAMInteractive

FORMAT = "hrsam"
FORMAT_VERSION = "1"

_SCAN_SUFFIX = r"(.+)"

# (authors' key pattern, our key template); Cycle-scan suffixes go through SCAN_KEY_MAP (the
# Cycle-scan module's own table: renamed suffixes only, the others keep their names).
AUTHOR_KEY_RULES: list[tuple[str, str]] = [
    (r"backbone\.patch_embed\.proj\.(weight|bias)", r"encoder.patch_embed.\1"),
    (r"backbone\.pos_embed", r"encoder.pos_embed"),
    (r"backbone\.blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"encoder.blocks.\1.\2.\3"),
    (r"backbone\.blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"encoder.blocks.\1.attn.\2.\3"),
    (r"backbone\.blocks\.(\d+)\.attn\.padding", r"encoder.blocks.\1.attn.padding"),
    (r"backbone\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.blocks.\1.mlp.\2.\3"),
    (r"backbone\.mamba_blocks\.(\d+)\." + _SCAN_SUFFIX, r"encoder.scans.\1.{scan}"),
    (r"backbone\.ss_mamba_blocks\.(\d+)\." + _SCAN_SUFFIX, r"encoder.scans.\1.{scan}"),
    (r"backbone\.ms_mamba_blocks\.(\d+)\." + _SCAN_SUFFIX, r"encoder.ms_scans.\1.{scan}"),
    (r"backbone\.multi_scale_fusion\.(\d+)\.0\.(weight|bias)", r"encoder.fusion_norms.\1.\2"),
    (r"backbone\.lateral_convs\.(\d+)\.0\.weight", r"encoder.neck.laterals.\1.proj.weight"),
    (r"backbone\.lateral_convs\.(\d+)\.1\.(weight|bias)", r"encoder.neck.laterals.\1.norm.\2"),
    (r"backbone\.out_conv\.0\.weight", r"encoder.neck.conv.weight"),
    (r"backbone\.out_conv\.2\.(weight|bias)", r"encoder.neck.norm.\1"),
    (
        r"neck\.pos_embed_layer\.positional_encoding_gaussian_matrix",
        r"decoder.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    ),
    (r"neck\.point_embeds\.(\d+)\.weight", r"decoder.prompt_encoder.point_embeddings.\1.weight"),
    (r"neck\.(not_a_point_embed|no_mask_embed)\.weight", r"decoder.prompt_encoder.\1.weight"),
    (r"neck\.mask_downscaling\.(\d+)\.(weight|bias)", r"decoder.prompt_encoder.mask_downscaling.\1.\2"),
    (
        r"decode_head\.((?:iou_token|mask_tokens|transformer|output_upscaling|output_hypernetworks_mlps"
        r"|iou_prediction_head)\..+)",
        r"decoder.mask_decoder.\1",
    ),
]

# Keys of training-only modules (losses, metrics, data preprocessor) and the RoPE frequency buffer
# their backbone saves (we compute the same table from the config): reported, never loaded.
IGNORED_AUTHOR_KEYS = re.compile(r"(decode_head\.loss_decode|losses|metric|data_preprocessor)\.|backbone\.rope\.freqs$")


@dataclass
class LoadReport:
    """Outcome of loading the authors' weights: our keys not provided, their keys not used."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8})" if len(keys) > 8 else "")

        return (
            f"missing {len(self.missing)}: [{show(self.missing)}]; unexpected {len(self.unexpected)}: "
            f"[{show(self.unexpected)}]; ignored {len(self.ignored)} training-only keys"
        )


def map_author_key(key: str) -> str | None:
    """Our parameter name for one of the authors' keys, or None if no rule matches."""
    for pattern, template in AUTHOR_KEY_RULES:
        match = re.fullmatch(pattern, key)
        if match is None:
            continue
        if "{scan}" in template:
            suffix = match.group(2)
            return match.expand(template.replace("{scan}", SCAN_KEY_MAP.get(suffix, suffix)))
        return match.expand(template)
    return None


def map_authors_state_dict(
    state_dict: Mapping[str, Tensor], model_keys: Mapping[str, torch.Size]
) -> tuple[dict[str, Tensor], LoadReport]:
    """Rename the authors' tensors to our names and check shapes against ``model_keys`` (name -> shape).

    Raises ValueError for shape mismatches (e.g. an HRSAM++ checkpoint into an HRSAM model).
    """
    mapped: dict[str, Tensor] = {}
    report = LoadReport()
    mismatched = []
    for key, tensor in state_dict.items():
        if IGNORED_AUTHOR_KEYS.match(key):
            report.ignored.append(key)
            continue
        ours = map_author_key(key)
        if ours is None or ours not in model_keys:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(model_keys[ours]):
            mismatched.append(f"{key} {tuple(tensor.shape)} -> {ours} {tuple(model_keys[ours])}")
        else:
            mapped[ours] = tensor
    if mismatched:
        raise ValueError(
            "checkpoint shapes do not fit this model (wrong config? HRSAM vs HRSAM++, vit_b vs tiny): "
            + "; ".join(mismatched[:8])
        )
    report.missing = [key for key in model_keys if key not in mapped]
    return mapped, report


def load_authors_checkpoint(
    model: HRSAMInteractive, checkpoint: Mapping[str, object] | str | Path, strict: bool = False
) -> LoadReport:
    """Load the authors' published weights into ``model`` through ``AUTHOR_KEY_RULES``.

    ``checkpoint``: their mmengine dict (with ``state_dict``), a bare state dict, or a file path
    (read with ``weights_only=True``). With ``strict`` a missing or unexpected key raises.
    """
    source = "the authors' checkpoint"
    if isinstance(checkpoint, str | Path):
        source = str(checkpoint)
        checkpoint = _read_torch_checkpoint(Path(checkpoint))
    state_dict = _tensor_dict(checkpoint, source)
    ours = model.state_dict()
    mapped, report = map_authors_state_dict(state_dict, {k: v.shape for k, v in ours.items()})
    if strict and not report.complete:
        raise ValueError(f"authors' checkpoint does not cover this model exactly: {report}")
    with torch.no_grad():
        for key, tensor in mapped.items():
            ours[key].copy_(tensor)
    return report


def _tensor_dict(checkpoint: object, source: str) -> Mapping[str, Tensor]:
    """The state dict inside ``checkpoint`` (mmengine's ``{"state_dict": ...}`` or a bare one), checked."""
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError(f"{source} is not a state dict: expected a dict of tensors or {{'state_dict': {{...}}}}")
    return state_dict


def _read_torch_checkpoint(path: Path) -> object:
    """``torch.load`` with ``weights_only=True``; any failure is a ValueError of one line naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise next to the real error
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - one line naming the file, not torch's advice
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {_torch_load_reason(path, error)}") from None


def _torch_load_reason(path: Path, error: Exception) -> str:
    """Why ``torch.load`` failed, in words a user can act on (torch's own text is several paragraphs)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsupported:
        return (
            f"it holds Python objects besides tensors ({unsupported.group(1)}), which a safe weights-only load "
            "refuses; save only the tensors, e.g. torch.save(checkpoint['state_dict'], 'weights.pth')"
        )
    with open(path, "rb") as file:
        head = file.read(4)
    if head == b"PK\x03\x04":
        return "the zip archive torch.save writes is truncated or corrupted"
    if not head:
        return "the file is empty"
    if not head.startswith(b"\x80"):
        return f"it is neither a torch.save zip archive nor a pickle (it starts with {head!r})"
    detail = text.split("WeightsUnpickler error:", 1)[-1]  # the cause, after torch's advice about weights_only
    first = next((line.strip() for line in detail.splitlines() if line.strip()), type(error).__name__)
    return f"a pickle that cannot be read ({first[:160]}): corrupted, or not written by torch.save"


def save_checkpoint(model: HRSAMInteractive, path: str | Path) -> None:
    """Write the weights and config of ``model`` to a safetensors file."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hrsam_config": json.dumps(model.config.to_dict()),
    }
    save_file(tensors, str(path), metadata=metadata)


def _safetensors_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as file:
            return file.metadata() or {}
    except Exception as error:  # noqa: BLE001 - SafetensorError and OSError alike: one line
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None


def read_config(path: str | Path) -> ModelConfig:
    """The model config stored in one of our safetensors checkpoints."""
    path = Path(path)
    metadata = _safetensors_metadata(path)
    if metadata.get("format") != FORMAT or "hrsam_config" not in metadata:
        raise ValueError(
            f"{path} is not an hrsam safetensors checkpoint (no hrsam_config metadata); for the authors' "
            "checkpoints use load_authors_checkpoint"
        )
    try:
        return ModelConfig.from_dict(json.loads(metadata["hrsam_config"]))
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path} has an hrsam_config that is not a valid model config ({error})") from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            return {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 - no __iter__
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> HRSAMInteractive:
    """Rebuild the model stored in ``path`` (config from its metadata) with its weights, in eval mode."""
    path = Path(path)
    config = read_config(path)
    model = HRSAMInteractive(config)
    _load_own_state_dict(model, _read_safetensors(path), path, allow_partial=False)
    return model.to(device).eval()


def _load_own_state_dict(
    model: HRSAMInteractive, state_dict: Mapping[str, Tensor], path: Path, allow_partial: bool
) -> list[str]:
    """Load a state dict with our key names; refuse missing or unexpected keys unless ``allow_partial``.

    Returns the names of the weights left as initialised (missing from the file).
    """
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    wrong = [
        f"{key} {tuple(tensor.shape)} vs {tuple(shapes[key])}"
        for key, tensor in state_dict.items()
        if key in shapes and tensor.shape != shapes[key]
    ]
    if wrong:  # load_state_dict would raise a multi-paragraph RuntimeError
        raise ValueError(
            f"{path} does not fit model {model.config.name!r}: {len(wrong)} tensors have other shapes "
            f"(first: {wrong[0]}); wrong --model?"
        )
    result = model.load_state_dict(state_dict, strict=False)
    _refuse_partial(path, model, result.missing_keys, result.unexpected_keys, allow_partial)
    return list(result.missing_keys)


def _load_authors_state_dict(
    model: HRSAMInteractive, state_dict: Mapping[str, Tensor], path: Path, allow_partial: bool
) -> list[str]:
    """``load_authors_checkpoint`` with the file named in its errors; returns the weights left as initialised."""
    try:
        report = load_authors_checkpoint(model, state_dict)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    _refuse_partial(path, model, report.missing, report.unexpected, allow_partial, " through the authors' key mapping")
    return report.missing


def _refuse_partial(
    path: Path, model: HRSAMInteractive, missing: list[str], unexpected: list[str], allow_partial: bool, how: str = ""
) -> None:
    if (missing or unexpected) and not allow_partial:
        raise ValueError(
            f"{path} does not cover model {model.config.name!r}{how}: {_key_summary(missing, unexpected)} "
            "(wrong --model? or pass --allow-partial / allow_partial=True to keep the missing weights random)"
        )


def _key_summary(missing: list[str], unexpected: list[str]) -> str:
    def show(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f", ... (+{len(keys) - 3})" if len(keys) > 3 else "")

    parts = [f"missing {len(missing)} [{show(missing)}]"] if missing else []
    parts += [f"unexpected {len(unexpected)} [{show(unexpected)}]"] if unexpected else []
    return "; ".join(parts)


DEFAULT_MODEL = "hrsam_tiny"
# The default model's trained weights (docs/MODEL_CARD.md): what load_model() gives without arguments.
BUNDLED_CHECKPOINT = Path(__file__).with_name("assets") / "hrsam_tiny_synthetic.safetensors"


@dataclass
class LoadedModel:
    """A model ready to run and what its weights are (shown by the CLI, the sidecar, the demo).

    ``random_weights``: no checkpoint at all. ``missing``: weights a partial checkpoint (loaded with
    ``allow_partial``) did not provide, so they keep their random initialisation.
    """

    model: HRSAMInteractive
    weights: str
    random_weights: bool
    missing: list[str] = field(default_factory=list)
    checkpoint: Path | None = None  # the file the weights came from (None: random)


def load_model(
    name: str | None = None,
    checkpoint: str | Path | None = None,
    *,
    allow_partial: bool = False,
    seed: int = 0,
) -> LoadedModel:
    """The one loader: a named config, a checkpoint file, or both (then they must agree).

    * neither: the bundled default model, ``DEFAULT_MODEL`` with the trained weights of
      ``BUNDLED_CHECKPOINT`` (docs/MODEL_CARD.md); random weights if that file is absent;
    * a name and no checkpoint: that config with random weights from ``seed``;
    * ``.safetensors`` written by ``save_checkpoint``: config read from the file; ``name``, if
      given, must match it;
    * any other file (``.pth`` / ``.pt``), or a ``.safetensors`` without our config: a state dict
      with our key names (``torch.save(model.state_dict())``) or the authors' mmengine checkpoint,
      mapped through ``AUTHOR_KEY_RULES``. Without ``name`` the config is the one the most tensors
      fit (names and shapes), ``DEFAULT_MODEL`` when none fits.

    A checkpoint that leaves any weight missing or brings weights the model does not have is
    refused, naming the first keys, unless ``allow_partial`` (seeded with ``seed``, the missing
    weights stay random and ``LoadedModel.missing`` lists them). Errors are ValueError /
    FileNotFoundError with one line that names the file.
    """
    if name is not None:
        get_config(name)  # an unknown name is an error before any file is read
    if name is None and checkpoint is None and BUNDLED_CHECKPOINT.is_file():
        checkpoint = BUNDLED_CHECKPOINT
    torch.manual_seed(seed)
    if checkpoint is None:
        config = get_config(name or DEFAULT_MODEL)
        return LoadedModel(HRSAMInteractive(config).eval(), f"random (seed {seed})", True)
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    config, state_dict = _read_any_checkpoint(path)
    if config is not None and name is not None and name != config.name:
        raise ValueError(f"{path} holds model {config.name!r}, not {name!r}: drop --model or use --model {config.name}")
    model = HRSAMInteractive(config or get_config(name or _best_fitting_config(state_dict)))
    shapes = model.state_dict()
    if config is not None or any(key in shapes for key in state_dict):
        missing, kind = _load_own_state_dict(model, state_dict, path, allow_partial), ""
    else:
        missing, kind = _load_authors_state_dict(model, state_dict, path, allow_partial), "authors' checkpoint, "
    note = f", {len(missing)} of {len(shapes)} weights left random" if missing else ""
    description = f"{path} ({kind}sha256 {file_sha256(path)[:12]}{note})"
    return LoadedModel(model.eval(), description, False, missing, path)


def _read_any_checkpoint(path: Path) -> tuple[ModelConfig | None, Mapping[str, Tensor]]:
    """The tensors of a checkpoint file and the config it carries (ours in safetensors), if any."""
    if path.suffix != ".safetensors":
        return None, _tensor_dict(_read_torch_checkpoint(path), str(path))
    ours = _safetensors_metadata(path).get("format") == FORMAT
    return (read_config(path) if ours else None), _read_safetensors(path)


def _best_fitting_config(state_dict: Mapping[str, Tensor]) -> str:
    """The named config that the most tensors fit, by our or the authors' key names and shapes."""
    def fitting(name: str) -> int:
        shapes = _config_shapes(name)
        mapped = ((key if key in shapes else map_author_key(key), tensor) for key, tensor in state_dict.items())
        return sum(1 for key, tensor in mapped if key in shapes and tuple(tensor.shape) == shapes[key])

    scores = {name: fitting(name) for name in CONFIGS}
    best = max(scores.values())
    return DEFAULT_MODEL if best == 0 or scores[DEFAULT_MODEL] == best else max(scores, key=scores.get)


@functools.cache
def _config_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of a named config (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        model = HRSAMInteractive(get_config(name))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in blocks: exported encoders can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state dict: names, dtypes, shapes and bytes, in sorted key order.

    Identifies the weights an exported graph or engine was made from, whatever file they came from.
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
