"""The demo's runners: one engine and one eager reference per (model, input size), shared by every session.

A ``Runner`` holds no per-image state (``hrsam/runner.py``), so one runner per backend serves all
sessions; what is per image is the ``HRSAMPredictor`` after ``set_image`` (it holds the
embedding). ``EnginePool.encode`` makes one such predictor per (runner, image, size) and keeps the
most recent ones in a small cache, so two sessions on the same image share one embedding and a
click never runs the encoder. ``predict`` only reads a predictor, so sharing it is safe.

Each shared runner is wrapped in a ``TimedRunner``: it runs the backend under that runner's lock
(a model is not run by two threads at once; lazily built caches inside it stay race-free) and
records the time of the backend's own ``encode`` / ``decode`` per thread. Those are the times the
latency panel compares: pre- and post-processing are the same code for every backend.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from demo.session import Encoding
from hrsam.checkpoint import LoadedModel, load_model, weights_sha256
from hrsam.compiled import CompiledRunner
from hrsam.contract import Sidecar
from hrsam.predictor import HRSAMPredictor
from hrsam.runner import EagerRunner, Runner, RunnerInfo, autocast_dtype_of
from trt_runtime import backend_unavailable_reason, open_runner

AUTO = "auto"
# The engine the demo shows when the user leaves the choice to it: the fastest that can run here.
ENGINE_PREFERENCE = ("tensorrt", "compiled", "onnxruntime")
# Backends that run an export directory (made through demo/pipeline.py); AOTInductor packages are
# not offered: the demo's pipeline does not build them.
FILE_BACKENDS = ("onnxruntime", "tensorrt")
# The precision each engine runs in unless --precision says otherwise: ONNX Runtime has only the
# float32 graphs; TensorRT and the compiled runner are there to be fast on a GPU.
DEFAULT_PRECISION = {"onnxruntime": "fp32", "tensorrt": "fp16", "compiled": "bf16", "eager": "fp32"}


@dataclass(frozen=True)
class ModelSpec:
    """A model the demo offers: its config name, and how to load it (``load_model`` / ``python -m export``).

    ``requested`` None means the package default (``load_model()``: the bundled trained model
    once there is one), so the demo, the export and the check all load the same weights.
    """

    name: str
    requested: str | None = None
    checkpoint: Path | None = None

    def export_args(self) -> list[str]:
        """The ``python -m export onnx`` arguments that select these weights."""
        args = ["--model", self.requested] if self.requested else []
        return args + (["--checkpoint", str(self.checkpoint)] if self.checkpoint else [])


@dataclass(frozen=True)
class Setting:
    """What a session's image is encoded with: model name, padded input size, engine backend (resolved)."""

    model: str
    size: int
    backend: str


@dataclass(frozen=True)
class Weights:
    """The eager model's weights, for the UI (random or not) and for keying exports (SHA-256)."""

    description: str
    random: bool
    sha256: str


class TimedRunner(Runner):
    """A shared runner run under its lock, timing the backend's own encode / decode per thread."""

    def __init__(self, inner: Runner, note: str = "") -> None:
        self.inner = inner
        self.note = note  # shown in the latency panel, e.g. weights that differ from eager's
        self._lock = threading.Lock()
        self._last = threading.local()

    @property
    def info(self) -> RunnerInfo:
        return self.inner.info

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def max_points(self) -> int | None:
        """Most prompt points (clicks + SAM's padding point) the backend takes, if it has a limit."""
        return getattr(self.inner, "max_points", None)

    def last_ms(self, kind: str) -> float:
        """Milliseconds of this thread's last ``encode`` or ``decode`` call."""
        return getattr(self._last, kind)

    def _timed(self, kind: str, call: Callable[[], object]) -> object:
        with self._lock:
            cuda = self.device.type == "cuda"
            if cuda:
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            result = call()
            if cuda:
                torch.cuda.synchronize(self.device)
            setattr(self._last, kind, (time.perf_counter() - start) * 1000.0)
        return result

    def encode(self, images: Tensor) -> Tensor:
        return self._timed("encode", lambda: self.inner.encode(images))

    def decode(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor]:
        return self._timed(
            "decode",
            lambda: self.inner.decode(image_embeddings, point_coords, point_labels, mask_input, has_mask_input),
        )


def engine_choices() -> list[tuple[str, str]]:
    """(label, value) pairs for the engine menu: "auto" first, then each engine with why it cannot run."""
    choices = [(f"auto ({resolve_auto()[0]})", AUTO)]
    for backend in ENGINE_PREFERENCE + ("eager",):
        reason = backend_unavailable_reason(backend)
        label = backend if reason is None else f"{backend} (cannot run here)"
        choices.append((label, backend))
    return choices


def resolve_auto() -> tuple[str, str]:
    """The engine "auto" picks (first of ``ENGINE_PREFERENCE`` that runs here) and a note why.

    Falls back to eager, so the demo still works where no engine can run; the note says so.
    """
    reasons = []
    for backend in ENGINE_PREFERENCE:
        reason = backend_unavailable_reason(backend)
        if reason is None:
            return backend, ""
        reasons.append(f"{backend}: {reason}")
    return "eager", "no engine backend can run here (" + "; ".join(reasons) + "), so both sides are eager PyTorch"


def resolve_backend(choice: str) -> tuple[str, str]:
    """The backend to run for a menu ``choice`` and a note; ValueError (shown in the UI) if it cannot run."""
    if choice == AUTO:
        return resolve_auto()
    reason = backend_unavailable_reason(choice)
    if reason is not None:
        raise ValueError(f"The {choice} backend cannot run on this machine: {reason}. Pick another engine.")
    return choice, ""


class EnginePool:
    """Runners and image embeddings shared by all sessions of one app.

    Args:
        models: the models offered, by config name.
        export_dir_for: (model spec, input size, weights SHA-256) -> export directory; called for
            file backends (it may export on first use: ``demo.pipeline.ExportCache.ensure``).
        device: where eager (and compiled) runners run; file backends get it too.
        precision: the engine's precision (fp32, fp16, bf16; ONNX Runtime is always fp32), None for
            ``DEFAULT_PRECISION``; the eager reference is always fp32.
        max_images: embeddings kept per runner pair for images no session holds any more.
    """

    def __init__(
        self,
        models: dict[str, ModelSpec],
        export_dir_for: Callable[[ModelSpec, int, str], Path],
        device: str | None = None,
        precision: str | None = None,
        max_images: int = 8,
    ) -> None:
        if precision is not None:
            autocast_dtype_of(precision)  # a clear error for an unknown precision, at start-up
        self.models = models
        self.export_dir_for = export_dir_for
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = precision
        self.max_images = max_images
        self._loaded: dict[str, tuple[LoadedModel, Weights]] = {}
        self._runners: dict[Hashable, TimedRunner] = {}
        self._encodings: OrderedDict[Hashable, Encoding] = OrderedDict()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock_for(self, key: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def spec(self, model: str) -> ModelSpec:
        if model not in self.models:
            raise ValueError(f"Unknown model {model!r}; choose one of {sorted(self.models)}.")
        return self.models[model]

    def _load(self, model: str) -> tuple[LoadedModel, Weights]:
        with self._lock_for(("load", model)):
            if model not in self._loaded:
                spec = self.spec(model)
                loaded = load_model(spec.requested, spec.checkpoint)
                weights = Weights(loaded.weights, loaded.random_weights, weights_sha256(loaded.model))
                self._loaded[model] = (loaded, weights)
            return self._loaded[model]

    def precision_for(self, backend: str) -> str:
        """The precision ``backend`` runs in here (ONNX Runtime has only float32 graphs)."""
        if backend in ("onnxruntime", "eager"):
            return "fp32"
        return self.precision or DEFAULT_PRECISION[backend]

    def weights(self, model: str) -> Weights:
        return self._load(model)[1]

    def eager(self, model: str) -> TimedRunner:
        """The fp32 eager reference of ``model`` (any input size)."""
        with self._lock_for(("eager", model)):
            if ("eager", model) not in self._runners:
                loaded, weights = self._load(model)
                runner = EagerRunner(loaded.model.to(self.device), weights=weights.description)
                self._runners["eager", model] = TimedRunner(runner)
            return self._runners["eager", model]

    def engine(self, setting: Setting) -> TimedRunner:
        """The engine runner of ``setting`` (file backends export on first use through ``export_dir_for``)."""
        if setting.backend == "eager":
            return self.eager(setting.model)
        key = ("engine", setting.backend, setting.model, setting.size)
        with self._lock_for(key):
            if key not in self._runners:
                self._runners[key] = self._open_engine(setting)
            return self._runners[key]

    def _open_engine(self, setting: Setting) -> TimedRunner:
        spec = self.spec(setting.model)
        precision = self.precision_for(setting.backend)
        if setting.backend == "compiled":  # compiled for the session's input size (open_runner's is 1024)
            loaded = load_model(spec.requested, spec.checkpoint)
            runner = CompiledRunner(loaded.model.to(self.device), autocast_dtype=autocast_dtype_of(precision),
                                    weights=loaded.weights, input_size=setting.size)
            return TimedRunner(runner)
        if setting.backend not in FILE_BACKENDS:
            raise ValueError(f"The demo does not offer the {setting.backend} engine; pick onnxruntime or tensorrt.")
        sha256 = self.weights(setting.model).sha256
        export_dir = self.export_dir_for(spec, setting.size, sha256)
        runner = open_runner(setting.backend, export_dir=export_dir, device=self._file_device(setting.backend),
                             precision=precision)
        same = Sidecar.read(export_dir).weights_sha256 == sha256
        note = "" if same else (
            f"The engine's export ({export_dir}) holds other weights than the eager model, so their masks differ."
        )
        return TimedRunner(runner, note)

    def _file_device(self, backend: str) -> str | None:
        """ONNX Runtime runs on the CPU (its custom nodes are served there); TensorRT picks its GPU."""
        if backend == "onnxruntime":
            return "cpu"
        return self.device if self.device.startswith("cuda") else None

    def encode(self, runner: TimedRunner, image: np.ndarray, digest: str, size: int) -> Encoding:
        """An ``Encoding`` of ``image`` (identified by ``digest``) on ``runner``: from the cache, or encoded now."""
        key = (id(runner), digest, size)  # runners live as long as the pool, so their ids stay unique
        with self._lock_for(("encode", id(runner))):  # a runner encodes one image at a time anyway
            with self._guard:
                if key in self._encodings:
                    self._encodings.move_to_end(key)
                    found = self._encodings[key]
                    return Encoding(found.predictor, found.backend, found.encode_ms, cached=True)
            predictor = HRSAMPredictor(runner)
            predictor.set_image(image, target_size=size)
            encoding = Encoding(predictor, runner.info.backend, runner.last_ms("encode"), cached=False)
            with self._guard:
                self._encodings[key] = encoding
                while len(self._encodings) > 2 * self.max_images:  # two runners (engine, eager) per image
                    self._encodings.popitem(last=False)
            return encoding
