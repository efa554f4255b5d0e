"""The export contract: file names, graph I/O, custom-node signatures and the sidecar.

Every side reads these from here: the exporter (``export``), the runtimes (``trt_runtime``), the
TensorRT plugins (``plugins``) and the ONNX Runtime custom ops. ``docs/EXPORT.md`` is the same
contract in prose; change both together.

An export directory holds ``encoder.onnx`` (one fixed input size), ``decoder.onnx`` (dynamic point
count) and the sidecar ``model.json``; engines built from them (``*.engine``, ``*.pt2``) sit beside
them and are listed in the sidecar. Each ONNX file carries ``hrsam.*`` metadata entries that tie it
to its sidecar, so a runtime refuses files that do not belong together and names the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXPORT_FORMAT = "hrsam-export"
EXPORT_FORMAT_VERSION = 1
OPSET = 18  # >= 17 keeps LayerNorm one LayerNormalization node
CUSTOM_DOMAIN = "hrsam"
PLUGIN_NAMESPACE = "hrsam"
PLUGIN_VERSION = "1"

SIDECAR_FILE = "model.json"
ONNX_FILES = {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
ENGINE_FILES = {"encoder": "encoder.engine", "decoder": "decoder.engine"}
AOTI_FILES = {"encoder": "encoder.pt2", "decoder": "decoder.pt2"}

ENCODER_INPUTS = ("images",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("iou_predictions", "low_res_masks")
NUM_MASK_OUTPUTS = 4  # SAM's single-mask output, then its three multimask outputs
POINTS_AXIS = "num_points"  # the decoder's one dynamic dimension (point_coords / point_labels axis 1)


@dataclass(frozen=True)
class CustomOp:
    """A custom ONNX node: op_type (= TensorRT plugin name), input / output order, attributes.

    ``attributes`` maps each attribute to its Python type; every node also carries
    ``plugin_namespace`` and ``plugin_version`` (strings), which TensorRT's ONNX parser uses to find
    the plugin.
    """

    op_type: str
    torch_op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, type]


VARLEN_ATTENTION = CustomOp(
    op_type="VarlenAttention",
    torch_op="hrsam::varlen_attention",
    inputs=("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k"),
    outputs=("out",),
    attributes={"scale": float, "max_seqlen_q": int, "max_seqlen_k": int},
)
SELECTIVE_SCAN = CustomOp(
    op_type="SelectiveScan",
    torch_op="hrsam::selective_scan",
    inputs=("u", "delta", "A", "B", "C", "D", "delta_bias"),
    outputs=("y",),
    attributes={"delta_softplus": int},
)
CUSTOM_OPS = {op.op_type: op for op in (VARLEN_ATTENTION, SELECTIVE_SCAN)}

# ONNX metadata_props of every exported graph (string values).
META_FORMAT = "hrsam.format"
META_PART = "hrsam.part"  # "encoder" or "decoder"
META_MODEL = "hrsam.model"
META_INPUT_SIZE = "hrsam.input_size"
META_WEIGHTS = "hrsam.weights_sha256"
META_PORTABLE = "hrsam.portable"  # "1": standard ops only, "0": hrsam custom nodes
# AOTInductor packages carry the metadata above plus these (``python -m export aoti``).
META_PRECISION = "hrsam.precision"  # "fp32", "bf16" or "fp16": the autocast compiled in
META_MAX_POINTS = "hrsam.max_points"  # decoder only: the most prompt points the package takes


@dataclass
class Sidecar:
    """``model.json``: what the exported files are and how to feed them (see docs/EXPORT.md).

    ``engines`` maps a part ("encoder" / "decoder") of a built engine to its record (file, sha256,
    precision, TensorRT version, GPU), filled in by ``python -m export engine``. ``aoti`` does the
    same for AOTInductor packages (``AOTI_FILES``), filled in by ``python -m export aoti``.
    """

    model: str
    config: dict[str, Any]
    input_size: int
    embedding_size: int
    weights_sha256: str
    weights: str
    random_weights: bool
    portable: bool
    source: dict[str, Any] = field(default_factory=dict)  # how to rebuild the eager model: checkpoint, seed
    opset: int = OPSET
    custom_ops: list[str] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)
    aoti: dict[str, dict[str, Any]] = field(default_factory=dict)
    exporter: dict[str, str] = field(default_factory=dict)
    format: str = EXPORT_FORMAT
    format_version: int = EXPORT_FORMAT_VERSION

    def metadata(self, part: str) -> dict[str, str]:
        """The metadata_props an ONNX file of ``part`` must carry to belong to this sidecar."""
        return {
            META_FORMAT: EXPORT_FORMAT,
            META_PART: part,
            META_MODEL: self.model,
            META_INPUT_SIZE: str(self.input_size),
            META_WEIGHTS: self.weights_sha256,
            META_PORTABLE: "1" if self.portable else "0",
        }

    def check_metadata(self, part: str, metadata: dict[str, str], source: str) -> None:
        """Raise ValueError naming the first field in which ``metadata`` (of file ``source``) differs."""
        if metadata.get(META_FORMAT) != EXPORT_FORMAT:
            raise ValueError(
                f"{source} is not an hrsam export (no {META_FORMAT} metadata); export it with "
                "`python -m export onnx`"
            )
        for key, want in self.metadata(part).items():
            got = metadata.get(key)
            if got != want:
                raise ValueError(
                    f"{source} does not belong to this {SIDECAR_FILE}: {key} is {got!r} in the file but "
                    f"{want!r} in the sidecar; export encoder and decoder again together"
                )

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / SIDECAR_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> Sidecar:
        """Read ``model.json`` of an export directory, with one-line errors for missing or bad files."""
        path = Path(directory) / SIDECAR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {SIDECAR_FILE} in {directory}: export with `python -m export onnx` first")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not readable JSON ({error})") from None
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{path} is not an hrsam export sidecar (format is not {EXPORT_FORMAT!r})")
        if data.get("format_version") != EXPORT_FORMAT_VERSION:
            raise ValueError(
                f"{path} has format_version {data.get('format_version')!r}; this hrsam reads "
                f"{EXPORT_FORMAT_VERSION}: export again"
            )
        fields = dataclasses.fields(cls)
        required = {f.name for f in fields if f.default is f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"{path} lacks fields {missing}: export again")
        names = {f.name for f in fields}
        return cls(**{k: v for k, v in data.items() if k in names})
