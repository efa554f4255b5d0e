"""The ``onnxruntime`` runner: an export directory's graphs on ONNX Runtime.

Opening checks, before any inference, that the directory's ``model.json``, ``encoder.onnx`` and
``decoder.onnx`` belong together (each file's ``hrsam.*`` metadata against the sidecar, and the
files' SHA-256 against the sidecar's records), and says which field differs when they do not.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor

from hrsam.checkpoint import file_sha256
from hrsam.contract import DECODER_INPUTS, ENCODER_INPUTS, ONNX_FILES, Sidecar
from hrsam.runner import Runner, RunnerInfo
from trt_runtime.ort_ops import make_session


def load_export(export_dir: str | Path, verify_files: bool = True) -> tuple[Sidecar, dict[str, Path]]:
    """Read and cross-check an ONNX export directory; returns its sidecar and the graph paths."""
    directory = Path(export_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"export directory not found: {directory}")
    sidecar = Sidecar.read(directory)
    paths = {}
    for part, name in ONNX_FILES.items():
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: export again with `python -m export onnx`")
        sidecar.check_metadata(part, _metadata(path), str(path))
        record = sidecar.files.get(part, {})
        if verify_files and record.get("sha256") not in (None, file_sha256(path)):
            raise ValueError(f"{path} was modified after export: its SHA-256 differs from {directory}/model.json")
        paths[part] = path
    return sidecar, paths


def _metadata(path: Path) -> dict[str, str]:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and friends: one line
        raise ValueError(f"{path} is not a readable ONNX file ({type(error).__name__})") from None
    return {entry.key: entry.value for entry in model.metadata_props}


class OnnxRuntimeRunner(Runner):
    """Encoder and decoder sessions of one export directory (fp32 graphs).

    ``encoder_session`` / ``decoder_session`` are plain ``onnxruntime.InferenceSession``s (polygraphy's
    ONNX Runtime runner takes them as they are).

    Args:
        export_dir: a directory written by ``python -m export onnx``.
        device: "cpu" (default), or "cuda" with onnxruntime-gpu's CUDA provider (use a ``--portable``
            export there: the custom nodes are served on the CPU).
        precision: only "fp32": the exported graphs are float32.
        threads: ONNX Runtime's intra-op threads (None: its default, one per core).
    """

    def __init__(
        self,
        export_dir: str | Path,
        device: str | None = None,
        precision: str = "fp32",
        threads: int | None = None,
        verify_files: bool = True,
    ) -> None:
        if precision != "fp32":
            raise ValueError(f"ONNX Runtime runs the exported float32 graphs; precision {precision!r} is not available")
        reason = self.unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        device = device or "cpu"
        providers = self._providers(device)
        self.sidecar, paths = load_export(export_dir, verify_files)
        self.export_dir = Path(export_dir)
        self.encoder_session = make_session(paths["encoder"], providers, threads)
        self.decoder_session = make_session(paths["decoder"], providers, threads)
        self._device = torch.device(device)
        self.info = RunnerInfo(
            "onnxruntime", self.sidecar.model, device, "fp32", self.sidecar.input_size,
            self.sidecar.weights,
        )

    @staticmethod
    @functools.cache
    def unavailable_reason() -> str | None:
        try:
            import onnxruntime  # noqa: F401
            import onnxruntime_extensions  # noqa: F401
        except ImportError as error:
            return f"ONNX Runtime is not installed ({error.name}): pip install 'hrsam[onnx]'"
        return None

    @staticmethod
    def _providers(device: str) -> list[str]:
        import onnxruntime as ort

        kind = torch.device(device).type
        if kind == "cpu":
            return ["CPUExecutionProvider"]
        if kind == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        raise RuntimeError(
            f"ONNX Runtime has no provider for device {device!r} here (available: {ort.get_available_providers()}); "
            "install onnxruntime-gpu for CUDA"
        )

    @property
    def device(self) -> torch.device:
        return self._device

    def encode(self, images: Tensor) -> Tensor:
        size = self.sidecar.input_size
        if tuple(images.shape) != (1, 3, size, size):
            raise ValueError(f"this export takes images [1, 3, {size}, {size}], got {tuple(images.shape)}")
        (embedding,) = self.encoder_session.run(None, {ENCODER_INPUTS[0]: _numpy(images)})
        return torch.from_numpy(embedding).to(self._device)

    def decode(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor]:
        tensors = (image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        feed = {name: _numpy(t) for name, t in zip(DECODER_INPUTS, tensors, strict=True)}
        iou, low_res = self.decoder_session.run(None, feed)
        return torch.from_numpy(iou).to(self._device), torch.from_numpy(low_res).to(self._device)


def _numpy(tensor: Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy())
