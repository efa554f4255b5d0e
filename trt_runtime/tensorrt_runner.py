"""The ``tensorrt`` runner: an export directory's TensorRT engines behind the one predictor.

``open_predictor("tensorrt", export_dir=DIR, precision="fp16")`` gives the same ``HRSAMPredictor``
as the eager and ONNX Runtime backends. Opening checks, before any engine is deserialized:
TensorRT and a CUDA GPU are there, ``model.json`` and the ONNX files belong together, both
engines are recorded in ``model.json`` (``python -m export engine`` writes them), were built with
this TensorRT version, for this GPU's compute capability, from these ONNX files, at this input
size and in the requested precision. Every mismatch is one line naming the field.

Engine I/O is the export contract's (float32 in and out whatever the compute precision): the
encoder [1, 3, S, S] -> [1, 256, S/16, S/16]; the decoder takes 1..max_points points (SAM's padding
point included), the range its optimisation profile was built for.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from hrsam.contract import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS, ENGINE_FILES
from hrsam.runner import Runner, RunnerInfo
from plugins import import_tensorrt
from trt_runtime.engine import Engine, EngineRecord, check_record, current_environment
from trt_runtime.onnxruntime_runner import load_export


def cuda_device(device: str | None) -> torch.device:
    """The CUDA device to run on; ValueError for a non-CUDA device, RuntimeError without a GPU."""
    target = torch.device(device or "cuda")
    if target.type != "cuda":
        raise ValueError(f"TensorRT engines run on a CUDA GPU, not on {device!r}: use device='cuda'")
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT engines need a CUDA GPU and this machine has none (torch.cuda.is_available())")
    return torch.device("cuda", torch.cuda.current_device() if target.index is None else target.index)


def engine_records(engines: dict, directory: Path) -> dict[str, EngineRecord]:
    """The encoder and decoder records of ``model.json``; one-line errors when one is missing."""
    records = {}
    for part in ENGINE_FILES:
        if part not in engines:
            raise FileNotFoundError(
                f"{directory} has no {part} engine in model.json: build engines with "
                f"`python -m export engine {directory}`"
            )
        records[part] = EngineRecord.from_dict(engines[part], f"{directory}/model.json engines.{part}")
    return records


class TensorRTRunner(Runner):
    """Encoder and decoder engines of one export directory.

    Args:
        export_dir: a directory with ONNX files and engines (``python -m export onnx`` then ``engine``).
        device: a CUDA device (default: the current one).
        precision: the engines' precision (fp32, fp16 or bf16): a different one is refused.
        cuda_graph: replay the encoder through a CUDA graph after its first run.
    """

    def __init__(
        self, export_dir: str | Path, device: str | None = None, precision: str = "fp32", cuda_graph: bool = True
    ) -> None:
        reason = self.unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        target = cuda_device(device)
        directory = Path(export_dir)
        self.sidecar, _ = load_export(directory)  # checks the ONNX files against model.json's SHA-256s
        environment = current_environment(target)
        self.records = engine_records(self.sidecar.engines, directory)
        self.warnings = []
        for part, record in self.records.items():
            self.warnings += check_record(
                record, environment, input_size=self.sidecar.input_size,
                onnx_sha256=self.sidecar.files.get(part, {}).get("sha256"), precision=precision,
            )  # fmt: skip
        self.encoder = Engine(directory / self.records["encoder"].file, self.records["encoder"], target, cuda_graph)
        self.decoder = Engine(directory / self.records["decoder"].file, self.records["decoder"], target)
        self.info = RunnerInfo(
            "tensorrt", self.sidecar.model, str(target), precision, self.sidecar.input_size, self.sidecar.weights
        )

    @staticmethod
    def unavailable_reason() -> str | None:
        """None when TensorRT and a CUDA GPU are here (engines are checked when opened)."""
        try:
            import_tensorrt()
        except ImportError as error:
            return str(error)
        if not torch.cuda.is_available():
            return "TensorRT engines need a CUDA GPU and this machine has none"
        return None

    @property
    def max_points(self) -> int:
        """Most points (SAM's padding point included) the decoder engine's profile takes."""
        spec = next(s for s in self.decoder.inputs if s.name == DECODER_INPUTS[1])
        return spec.max_shape[1]

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder.run({ENCODER_INPUTS[0]: images})[ENCODER_OUTPUTS[0]]

    def decode(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor]:
        points = point_coords.shape[1]
        if points > self.max_points:
            raise ValueError(
                f"this decoder engine takes at most {self.max_points - 1} clicks ({self.max_points} points with "
                f"SAM's padding point), got {points - 1}: rebuild with `python -m export engine --max-points N`"
            )
        feeds = dict(zip(DECODER_INPUTS, (image_embeddings, point_coords, point_labels, mask_input, has_mask_input),
                         strict=True))  # fmt: skip
        outputs = self.decoder.run({name: t.float() for name, t in feeds.items()})
        return outputs[DECODER_OUTPUTS[0]], outputs[DECODER_OUTPUTS[1]]
