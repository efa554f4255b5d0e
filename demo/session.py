"""One user's demo session: the image, its clicks, and both backends' results, with undo and reset.

Pure Python and numpy, no Gradio, so the click / undo / reset rules are unit-tested on their own
(``tests/test_demo_session.py``). The app keeps one ``Session`` per browser session in ``gr.State``.

Two backends answer every click: the *engine* (ONNX Runtime, TensorRT, compiled) and the *eager*
PyTorch reference. Each keeps its own chain of mask prompts (a click is decoded with that backend's
previous low-resolution logits), so the two chains are compared as a user would see them.
Full-resolution masks are stored bit-packed (a 4K mask is 1 MB instead of 8 MB per backend per
click), because a session keeps every step for undo.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from hrsam.predictor import validate_points

ROLES = ("engine", "eager")


@dataclass(frozen=True)
class Click:
    """A click in original-image pixels; ``positive`` adds to the object, negative removes."""

    x: int
    y: int
    positive: bool

    @property
    def label(self) -> int:
        return 1 if self.positive else 0


@dataclass(frozen=True)
class BackendResult:
    """One backend's answer to one click: the mask (bit-packed), its mask prompt for the next click, timing."""

    mask_bits: np.ndarray
    shape: tuple[int, int]
    low_res: np.ndarray
    score: float
    decode_ms: float

    @classmethod
    def from_mask(cls, mask: np.ndarray, low_res: np.ndarray, score: float, decode_ms: float) -> BackendResult:
        return cls(np.packbits(mask, axis=None), (mask.shape[0], mask.shape[1]), low_res, float(score), decode_ms)

    @property
    def mask(self) -> np.ndarray:
        """The H x W boolean mask at the original image resolution."""
        count = self.shape[0] * self.shape[1]
        return np.unpackbits(self.mask_bits, count=count).reshape(self.shape).astype(bool)

    @property
    def area(self) -> int:
        return int(np.unpackbits(self.mask_bits).sum())  # pad bits of packbits are zero


@dataclass(frozen=True)
class Step:
    """A click and what each backend (by role) answered; ``iou`` compares the engine's and eager's masks."""

    click: Click
    results: dict[str, BackendResult]

    @cached_property
    def iou(self) -> float | None:  # computed once: the panel and the table read it on every update
        if not all(role in self.results for role in ROLES):
            return None
        return mask_iou(self.results["engine"].mask, self.results["eager"].mask)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks; two empty masks agree perfectly (1.0)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@dataclass
class Encoding:
    """What encoding the image gave one role: the predictor holding its embedding, and the time it took.

    ``predictor`` is opaque here (an ``HRSAMPredictor`` with the image set, shared with other
    sessions that show the same image); ``cached`` says the embedding came from the cache.
    """

    predictor: Any
    backend: str
    encode_ms: float
    cached: bool


@dataclass
class Session:
    """The state of one browser session. ``lock`` serialises that session's own events."""

    root: Path | None = None
    image: np.ndarray | None = None
    image_name: str = ""
    setting: Any = None
    encodings: dict[str, Encoding] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _workdir: Path | None = field(default=None, repr=False)

    @property
    def has_image(self) -> bool:
        return self.image is not None and bool(self.encodings)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image; (0, 0) without one."""
        return (0, 0) if self.image is None else (self.image.shape[0], self.image.shape[1])

    def load(
        self, image: np.ndarray, name: str, setting: Any, encodings: dict[str, Encoding], notes: list[str]
    ) -> None:
        """Show a new image (or the same image under a new setting): previous clicks no longer apply.

        ``notes``: sentences about this encoding the latency panel shows (e.g. why "auto" fell back).
        """
        self.image, self.image_name, self.setting = image, name, setting
        self.encodings, self.notes = dict(encodings), list(notes)
        self.steps.clear()

    def check_click(self, x: Any, y: Any, positive: bool) -> Click:
        """Validate a click before any work; ValueError with a sentence the UI shows."""
        if self.image is None:
            raise ValueError("No image yet: upload an image or pick the example first, then click on it.")
        try:
            coords, _ = validate_points([[x, y]], [1], self.size)
        except ValueError:
            height, width = self.size
            raise ValueError(
                f"That click ({x}, {y}) is outside the {width} x {height} image: click on the picture itself."
            ) from None
        return Click(int(coords[0, 0]), int(coords[0, 1]), bool(positive))

    @property
    def clicks(self) -> list[Click]:
        return [step.click for step in self.steps]

    def points(self, extra: Click | None = None) -> tuple[np.ndarray, np.ndarray]:
        """N x 2 (x, y) coordinates and N labels of every click so far (plus ``extra``)."""
        clicks = self.clicks + ([extra] if extra else [])
        coords = np.array([[c.x, c.y] for c in clicks], dtype=np.float64).reshape(-1, 2)
        return coords, np.array([c.label for c in clicks], dtype=np.float64)

    def mask_prompt(self, role: str) -> np.ndarray | None:
        """The role's low-resolution logits from the last click: the mask prompt of the next one."""
        return self.steps[-1].results[role].low_res if self.steps else None

    def add(self, step: Step) -> None:
        self.steps.append(step)

    def undo(self) -> bool:
        """Forget the last click (its masks and timings); False when there was none."""
        if not self.steps:
            return False
        self.steps.pop()
        return True

    def reset(self) -> None:
        """Forget every click; the image and its embeddings stay."""
        self.steps.clear()

    @property
    def last(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    def decode_ms(self, role: str) -> list[float]:
        """Per-click decoder times of one role, in click order."""
        return [step.results[role].decode_ms for step in self.steps if role in step.results]

    def median_decode_ms(self, role: str) -> float | None:
        times = self.decode_ms(role)
        return median(times) if times else None

    def latency_rows(self) -> list[dict[str, Any]]:
        """One row per click and role (click number, backend, ms) for the latency plot."""
        rows = []
        for number, step in enumerate(self.steps, start=1):
            for role, result in step.results.items():
                rows.append({"click": number, "backend": self.series_name(role), "decoder ms": result.decode_ms})
        return rows

    def series_name(self, role: str) -> str:
        """How the plot names a role's line: "engine (onnxruntime)", "eager PyTorch"."""
        if role == "eager":
            return "eager PyTorch"
        return f"engine ({self.encodings[role].backend})" if role in self.encodings else role

    def workdir(self) -> Path:
        """This session's own folder for the uploaded image and the PNGs it produces (made on first use)."""
        if self._workdir is None:
            if self.root is not None:
                self.root.mkdir(parents=True, exist_ok=True)
            self._workdir = Path(tempfile.mkdtemp(prefix="session-", dir=self.root))
        return self._workdir

    def close(self) -> None:
        """Delete the session folder and drop references to embeddings (Gradio calls this when the state expires)."""
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self.encodings.clear()
        self.steps.clear()
        self.image = None
