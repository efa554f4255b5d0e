"""``AOTIRunner``: the AOTInductor packages of an export directory (made by ``python -m export aoti``).

``encoder.pt2`` (one input size) and ``decoder.pt2`` (dynamic point count) hold the compiled
halves with their weights; ``torch._inductor.aoti_load_package`` loads them and no Python model
code runs. The runner refuses packages that do not belong to the directory's ``model.json``
(``Sidecar.check_metadata`` on the metadata compiled into each package), a precision other than
the one compiled in, a CUDA package on a machine without CUDA, a file that is no package, and a
package whose wrapper library would crash the process on load (``aoti_check``), each with one line
that says what to do.

On CUDA each package call is replayed from a CUDA graph (``hrsam.compiled.CudaGraphCall``, as the
``compiled`` runner does): a package launches Inductor's kernels one by one from C++, and at
HRSAM's sizes those launches cost about as much as the kernels (docs/BENCHMARKS.md: 5.2 ms
against 3.3 ms for the same compiled encoder replayed from a graph). The encoder has one graph,
the decoder one per point count, captured at its first use. Such packages are loaded with
``run_single_threaded``: the package's model container otherwise waits on events of its previous
run between calls, which a stream capture refuses ("operation not permitted when stream is
capturing", seen on the H200). A runner is therefore one caller at a time, as the ``compiled``
runner is (its graphs share static buffers); the demo holds a lock per runner. Should a capture
fail, the runner says why once (``graph_failure``, a warning) and calls the packages directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from hrsam.compiled import CudaGraphCall
from hrsam.contract import AOTI_FILES, META_MAX_POINTS, META_PRECISION, Sidecar
from hrsam.runner import Runner, RunnerInfo
from trt_runtime.aoti_check import embedded_libstdcxx_reason

log = logging.getLogger(__name__)


class AOTIRunner(Runner):
    """Runs ``encoder.pt2`` / ``decoder.pt2`` of ``export_dir``.

    Args:
        export_dir: a directory written by ``python -m export aoti``.
        device: where to run; None: the kind of device the packages were compiled for ("cuda" is
            the current CUDA device, "cuda:1" another one).
        precision: must be the precision the packages were compiled with (their sidecar record).
        cuda_graphs: on CUDA, replay each package call from a CUDA graph (see the module docstring).
    """

    def __init__(
        self, export_dir: str | Path, device: str | None = None, precision: str = "fp32", cuda_graphs: bool = True
    ) -> None:
        directory = Path(export_dir)
        sidecar = Sidecar.read(directory)
        missing = [part for part in AOTI_FILES if part not in sidecar.aoti]
        if missing:
            raise FileNotFoundError(
                f"{directory} has no AOTInductor package for {', '.join(missing)}: "
                f"run `python -m export aoti --out {directory}` with the same model and --size"
            )
        built = sidecar.aoti["encoder"]
        if precision != built["precision"]:
            raise ValueError(
                f"the packages in {directory} were compiled for {built['precision']}, not {precision}: "
                f"pass precision={built['precision']!r} or export again with --precision {precision}"
            )
        target = _target_device(device, built["device"], directory)
        replay = cuda_graphs and target.type == "cuda"
        self._packages = {part: self._load(directory, sidecar, part, target, precision, replay) for part in AOTI_FILES}
        self.max_points = int(self._packages["decoder"][1][META_MAX_POINTS])
        self.embedding_size = sidecar.embedding_size
        self.info = RunnerInfo("aoti", sidecar.model, str(target), precision, sidecar.input_size, sidecar.weights)
        self._graphs = _GraphReplays() if replay else None

    @property
    def graph_failure(self) -> str | None:
        """Why the package calls are not replayed from CUDA graphs (None while they are, or were never asked to be)."""
        return None if self._graphs is None else self._graphs.failure

    def _run(self, part: str, key: object, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """One package call, through its CUDA graph where there is one; outputs as a tuple."""
        package = self._packages[part][0]
        if self._graphs is not None:
            return self._graphs.call((part, key), package, inputs)
        return _call_package(package, inputs)

    @staticmethod
    def unavailable_reason() -> str | None:
        """None when AOTInductor packages can be loaded here (CUDA packages also need a GPU: checked on open)."""
        try:
            from torch._inductor import aoti_load_package  # noqa: F401
        except ImportError as error:
            return f"this torch cannot load AOTInductor packages ({error})"
        return None

    @staticmethod
    def _load(
        directory: Path, sidecar: Sidecar, part: str, device: torch.device, precision: str, single_threaded: bool
    ) -> tuple[object, dict[str, str]]:
        """(loaded package, its metadata), after checking the metadata against the sidecar.

        ``single_threaded`` drops the container's between-run synchronization, which a CUDA graph
        capture of the call cannot hold.
        """
        path = directory / sidecar.aoti[part]["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: export again with `python -m export aoti --out {directory}`")
        reason = embedded_libstdcxx_reason(path)  # a load would end the process: refuse first
        if reason is not None:
            raise RuntimeError(reason)
        index = device.index if device.type == "cuda" else -1
        package = torch._inductor.aoti_load_package(str(path), run_single_threaded=single_threaded, device_index=index)
        metadata = dict(package.get_metadata())
        sidecar.check_metadata(part, metadata, path.name)
        if metadata.get(META_PRECISION) != precision:
            compiled = metadata.get(META_PRECISION)
            raise ValueError(f"{path.name} was compiled for {compiled!r}; its sidecar says {precision}: export again")
        return package, metadata

    def encode(self, images: Tensor) -> Tensor:
        size = self.info.input_size
        if images.dim() != 4 or tuple(images.shape) != (1, 3, size, size):
            raise ValueError(f"images must be [1, 3, {size}, {size}] for this package, got {list(images.shape)}")
        return self._run("encoder", None, (images.to(self.device, torch.float32).contiguous(),))[0]

    def decode(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor]:
        points = point_coords.shape[1] if point_coords.dim() == 3 else 0
        if not 1 <= points <= self.max_points:
            raise ValueError(
                f"the decoder package takes 1 to {self.max_points} points (clicks + SAM's padding point), got "
                f"point_coords of shape {list(point_coords.shape)}; export with a larger --max-points"
            )
        side = self.embedding_size
        if tuple(image_embeddings.shape) != (1, 256, side, side):
            raise ValueError(f"image_embeddings must be [1, 256, {side}, {side}], got {list(image_embeddings.shape)}")
        inputs = (image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        iou, masks = self._run("decoder", points, tuple(t.to(self.device, torch.float32).contiguous() for t in inputs))
        return iou, masks


class _GraphReplays:
    """CUDA graphs of package calls, one per key (part, input shape), captured at first use, one memory pool.

    The graphs read their inputs from buffers of their own, never the caller's tensors: a replay
    copies the new inputs into them, which would otherwise overwrite, say, an image's cached
    embedding with the next image's. Buffers of the same part, position and shape are shared
    (the decoder's embedding and mask buffers serve every point count, as in ``CompiledRunner``).
    """

    def __init__(self) -> None:
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[object, CudaGraphCall] = {}
        self._buffers: dict[tuple, Tensor] = {}
        self.failure: str | None = None

    def _static(self, part: str, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The graph buffers for ``inputs`` of ``part``, made once per position, shape and dtype."""
        buffers = []
        for position, tensor in enumerate(inputs):
            key = (part, position, tuple(tensor.shape), tensor.dtype)
            if key not in self._buffers:
                self._buffers[key] = tensor.clone()
            buffers.append(self._buffers[key])
        return tuple(buffers)

    def call(self, key: tuple, package: Callable[..., object], inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if self.failure is None and key not in self._graphs:
            try:
                static = self._static(key[0], inputs)
                self._graphs[key] = CudaGraphCall(lambda *x: _call_package(package, x), static, self._pool)
            except RuntimeError as error:  # the package did something a capture cannot hold
                self.failure = f"CUDA graph capture of the {key[0]} package failed: {error}"
                log.warning("%s; calling the packages directly", self.failure)
        graph = self._graphs.get(key)
        return graph(*inputs) if graph is not None else _call_package(package, inputs)


def _call_package(package: Callable[..., object], inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """A loaded package's outputs as a tuple (the encoder's is one tensor, the decoder's a pair)."""
    outputs = package(*inputs)
    return tuple(outputs) if isinstance(outputs, (list, tuple)) else (outputs,)


def _target_device(device: str | None, built: str, directory: Path) -> torch.device:
    """The device to run on: the packages' kind, and a GPU present when they are CUDA packages."""
    target = torch.device(device or built)
    if target.type != built:
        raise ValueError(
            f"the packages in {directory} were compiled for {built}, not {target.type}: "
            f"export again with `python -m export aoti --device {target.type}`"
        )
    if target.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"the packages in {directory} were compiled for CUDA and this machine has no CUDA device "
            "(a CPU package: `python -m export aoti --device cpu`)"
        )
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    return target
