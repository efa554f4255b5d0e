"""A TensorRT engine file: its sidecar record, the checks before loading, and running it on torch tensors.

A serialized engine runs only with the TensorRT version that built it, on a GPU of the compute
capability it was built for, and it was built from one ``encoder.onnx`` / ``decoder.onnx`` at one
input size and precision. ``EngineRecord`` (stored in ``model.json`` under ``engines``) says all of
that, and ``check_record`` refuses a mismatch with a one-line error naming the field, before
TensorRT is asked to deserialize anything (it would otherwise fail with a less helpful message or,
worse, run).

``Engine`` binds torch CUDA tensors by name (``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3`` on the caller's stream), checks every input against the engine's I/O
(``check_feeds``), and can replay a fixed-shape engine through a CUDA graph. Engines built with
``--plugins jit`` need the plugins registered first, which ``Engine`` does (AOT engines carry
their kernels).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from hrsam.checkpoint import file_sha256
from plugins import import_tensorrt, unavailable_reason


@dataclass(frozen=True)
class EngineRecord:
    """What one engine file was built from, with and for (``model.json`` ``engines[part]``)."""

    file: str
    sha256: str
    part: str
    precision: str
    input_size: int
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    plugins: str
    max_points: int | None = None
    workspace_bytes: int | None = None
    build_seconds: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str) -> EngineRecord:
        """Parse a sidecar record; ValueError naming what is missing (e.g. a record from an older hrsam)."""
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"{source} lacks {missing}: rebuild the engine with `python -m export engine`")
        return cls(**{f.name: data[f.name] for f in fields if f.name in data})


@dataclass(frozen=True)
class Environment:
    """Where an engine is about to run: TensorRT version and the GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def current_environment(device: torch.device) -> Environment:
    """This process's TensorRT version and ``device``'s GPU (TensorRT must be importable)."""
    trt = import_tensorrt()
    major, minor = torch.cuda.get_device_capability(device)
    return Environment(trt.__version__, torch.cuda.get_device_name(device), f"{major}.{minor}")


def check_record(
    record: EngineRecord,
    environment: Environment,
    *,
    input_size: int,
    onnx_sha256: str | None,
    precision: str | None = None,
) -> list[str]:
    """Raise ValueError (one line, naming the field) if the engine cannot or must not run here.

    Returns warnings that do not prevent running (another GPU model of the same compute capability
    runs the engine, possibly with tactics tuned for the other model).
    """
    name = f"{record.file} ({record.part})"
    rebuild = "rebuild it here with `python -m export engine`"
    if record.tensorrt_version != environment.tensorrt_version:
        raise ValueError(
            f"{name} was built with TensorRT {record.tensorrt_version} but this is TensorRT "
            f"{environment.tensorrt_version}: engines run only with the version that built them; {rebuild}"
        )
    if record.compute_capability != environment.compute_capability:
        raise ValueError(
            f"{name} was built for compute capability {record.compute_capability} ({record.gpu_name}) but this "
            f"GPU ({environment.gpu_name}) is {environment.compute_capability}; {rebuild}"
        )
    if record.input_size != input_size:
        raise ValueError(f"{name} was built for input size {record.input_size}, the export is {input_size}; {rebuild}")
    if onnx_sha256 is not None and record.onnx_sha256 != onnx_sha256:
        raise ValueError(f"{name} was built from another {record.part}.onnx (exported again since); {rebuild}")
    if precision is not None and record.precision != precision:
        raise ValueError(
            f"{name} is a {record.precision} engine, not {precision}: open it with precision={record.precision!r} "
            f"or build {precision} engines (`python -m export engine --precision {precision}`)"
        )
    if record.gpu_name != environment.gpu_name:
        return [f"{name} was tuned on {record.gpu_name}; running on {environment.gpu_name} (same compute capability)"]
    return []


@dataclass(frozen=True)
class TensorSpec:
    """One engine input: name, dtype, shape (-1 for dynamic axes) and the profile's min / max shapes."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    min_shape: tuple[int, ...]
    max_shape: tuple[int, ...]


def check_feeds(specs: list[TensorSpec], feeds: dict[str, Tensor], device: torch.device) -> None:
    """ValueError naming the first input that does not fit the engine (name, dtype, shape, device)."""
    expected = [spec.name for spec in specs]
    if sorted(feeds) != sorted(expected):
        raise ValueError(f"the engine takes inputs {expected}, got {sorted(feeds)}")
    for spec in specs:
        tensor = feeds[spec.name]
        shape = tuple(tensor.shape)
        if tensor.dtype != spec.dtype:
            raise ValueError(f"{spec.name} must be {spec.dtype}, got {tensor.dtype}")
        if tensor.device != device:
            raise ValueError(f"{spec.name} is on {tensor.device}, the engine runs on {device}")
        if len(shape) != len(spec.shape):
            raise ValueError(f"{spec.name} must have shape {spec.shape} (-1: any in the profile), got {shape}")
        for axis, (size, low, high) in enumerate(zip(shape, spec.min_shape, spec.max_shape, strict=True)):
            if not low <= size <= high:
                allowed = f"{low}" if low == high else f"{low}..{high}"
                raise ValueError(f"{spec.name} axis {axis} is {size}; this engine takes {allowed} (shape {spec.shape})")


def _register_plugins_for(record: EngineRecord) -> None:
    """Register the hrsam plugins before deserializing an engine that has them.

    A JIT engine calls back into them; an AOT engine carries its kernels and runs without them
    (``trtexec`` does), so for it registration is only done when ``tensorrt.plugin`` is there.
    """
    if record.plugins == "none":
        return
    reason = unavailable_reason(aot=record.plugins == "aot")
    if reason is not None and record.plugins == "jit":
        raise RuntimeError(f"{record.file} calls Python plugins (built with --plugins jit): {reason}")
    if reason is None:
        from plugins.tensorrt_plugins import register_plugins

        register_plugins(aot=record.plugins == "aot")


def _torch_dtype(trt, dtype) -> torch.dtype:  # noqa: ANN001
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
             trt.int32: torch.int32, trt.int64: torch.int64, trt.bool: torch.bool}  # fmt: skip
    return table[dtype]


class Engine:
    """One deserialized engine with one execution context, run on torch CUDA tensors.

    ``cuda_graph``: capture the first run of a fixed-shape engine in a CUDA graph and replay it
    afterwards (inputs are copied into static buffers); outputs are returned as fresh tensors.
    """

    def __init__(self, path: Path, record: EngineRecord, device: torch.device, cuda_graph: bool = False) -> None:
        trt = import_tensorrt()
        _register_plugins_for(record)
        if file_sha256(path) != record.sha256:
            raise ValueError(f"{path} differs from the engine recorded in model.json (SHA-256): rebuild it")
        self.path, self.record, self.device = path, record, device
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(device):
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise RuntimeError(f"TensorRT could not deserialize {path} (see its log above); rebuild the engine")
            self._context = self._engine.create_execution_context()
        self.inputs, self.outputs = self._io()
        self._use_graph = cuda_graph and all(-1 not in spec.shape for spec in self.inputs)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: dict[str, Tensor] = {}

    def _io(self) -> tuple[list[TensorSpec], list[str]]:
        trt, engine = self._trt, self._engine
        inputs, outputs = [], []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                outputs.append(name)
                continue
            shape = tuple(engine.get_tensor_shape(name))
            low, high = shape, shape
            if -1 in shape:
                low, _, high = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
            inputs.append(TensorSpec(name, _torch_dtype(trt, engine.get_tensor_dtype(name)), shape, low, high))
        return inputs, outputs

    def _bind(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        context = self._context
        for name, tensor in feeds.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        results = {}
        for name in self.outputs:
            shape = tuple(context.get_tensor_shape(name))
            dtype = _torch_dtype(self._trt, self._engine.get_tensor_dtype(name))
            results[name] = torch.empty(shape, dtype=dtype, device=self.device)
            context.set_tensor_address(name, results[name].data_ptr())
        return results

    def _execute(self, stream: torch.cuda.Stream) -> None:
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.path.name} (see its log above)")

    def run(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        """Outputs by name for inputs by name, on the current CUDA stream (asynchronous like any kernel)."""
        check_feeds(self.inputs, feeds, self.device)
        feeds = {name: tensor.contiguous() for name, tensor in feeds.items()}
        stream = torch.cuda.current_stream(self.device)
        if not self._use_graph:
            outputs = self._bind(feeds)
            self._execute(stream)
            return outputs
        if self._graph is None:
            self._capture(feeds)
        for name, tensor in feeds.items():
            self._static[name].copy_(tensor)
        self._graph.replay()
        return {name: self._static[name].clone() for name in self.outputs}

    def _capture(self, feeds: dict[str, Tensor]) -> None:
        """Run once (TensorRT's first enqueue does one-time work), then capture the enqueue."""
        self._static = {name: tensor.clone() for name, tensor in feeds.items()}
        self._static.update(self._bind(self._static))
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._execute(side)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            self._execute(side)
        self._graph = graph
