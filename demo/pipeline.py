"""Exported models for the demo: export once, validate, cache; the steps run as ``python -m export`` processes.

The demo never imports ``export`` (imports point demo -> trt_runtime -> export, and the exporter
pulls in onnx / onnxscript); it runs the documented commands instead, exactly as a user would:

1. ``python -m export onnx [--model M] [--checkpoint F] --size S --out DIR``;
2. ``python -m export check DIR``: ONNX Runtime against eager on the same inputs;
3. where TensorRT can run (a GPU and the TensorRT package): ``python -m export engine DIR
   --precision P`` and ``python -m export validate DIR`` (the engines against eager).

Exports are cached under ``<cache>/<model>-<weights sha256[:12]>-<size>/`` with a ``.validated``
marker written after the check passed, so a second launch (or a second user choosing the same
model and size) reuses them. A half-finished export is written to a ``.partial`` folder and renamed
only when complete, so a crash never leaves a broken cache entry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from demo.engines import ModelSpec
from hrsam.contract import SIDECAR_FILE, Sidecar
from trt_runtime import backend_unavailable_reason

VALIDATED = ".validated"


def default_cache_dir() -> Path:
    """``$HRSAM_CACHE/exports``, else ``$XDG_CACHE_HOME/hrsam/exports`` (``~/.cache/hrsam/exports``)."""
    if os.environ.get("HRSAM_CACHE"):
        return Path(os.environ["HRSAM_CACHE"]) / "exports"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hrsam" / "exports"


def export_key(model: str, weights_sha256: str, size: int) -> str:
    """The cache folder name of one export: model, weights and input size decide what is in it."""
    return f"{model}-{weights_sha256[:12]}-{size}"


class ExportError(RuntimeError):
    """An export or check command failed; the message is its last error line (shown in the UI)."""


class ExportCache:
    """Export directories by (model, weights, size), made on first request and reused afterwards.

    Args:
        root: the cache folder.
        pinned: an export directory given by the user (``--export-dir``); it is used for its own
            model and size and never rewritten.
        log: where progress lines go (the launcher prints them).
        engine_precision: the precision TensorRT engines are built in, where TensorRT runs.
    """

    def __init__(
        self, root: Path, pinned: Path | None = None, log: Callable[[str], None] = print, engine_precision: str = "fp16"
    ) -> None:
        self.root = root
        self.engine_precision = engine_precision
        self.pinned = pinned
        self.pinned_sidecar = Sidecar.read(pinned) if pinned is not None else None
        self.log = log
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def cached(self, spec: ModelSpec, size: int, weights_sha256: str) -> Path | None:
        """The validated export of these weights at this size, if there is one."""
        sidecar = self.pinned_sidecar
        if sidecar is not None and (sidecar.model, sidecar.input_size) == (spec.name, size):
            return self.pinned
        directory = self.root / export_key(spec.name, weights_sha256, size)
        return directory if (directory / VALIDATED).is_file() and (directory / SIDECAR_FILE).is_file() else None

    def ensure(self, spec: ModelSpec, size: int, weights_sha256: str) -> Path:
        """The export directory for ``spec`` at ``size``: cached, or exported and validated now."""
        key = export_key(spec.name, weights_sha256, size)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            found = self.cached(spec, size, weights_sha256)
            if found is not None:
                self.log(f"using the given export: {found}" if found == self.pinned else f"export cached: {found}")
                return found
            return self._export(spec, size, key)

    def _export(self, spec: ModelSpec, size: int, key: str) -> Path:
        final = self.root / key
        partial = self.root / f"{key}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"exporting {spec.name} at input size {size} to ONNX (once; cached in {final})")
        try:
            run_export_command(["onnx", *spec.export_args(), "--size", str(size), "--out", str(partial)])
            self.log("validating ONNX Runtime against eager PyTorch (python -m export check)")
            report = run_export_command(["check", str(partial)])
            if backend_unavailable_reason("tensorrt") is None:
                self.log(f"building {self.engine_precision} TensorRT engines (python -m export engine)")
                run_export_command(["engine", str(partial), "--precision", self.engine_precision])
                self.log("validating the engines against eager PyTorch (python -m export validate)")
                report += run_export_command(["validate", str(partial)])
            (partial / VALIDATED).write_text(report)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        shutil.rmtree(final, ignore_errors=True)  # an unvalidated leftover of an older run
        partial.rename(final)
        return final


def run_export_command(args: list[str]) -> str:
    """Run ``python -m export ARGS`` with this interpreter; its output, or ExportError with its error line."""
    command = [sys.executable, "-m", "export", *args]
    # The folder holding the demo package holds ``export`` too (a checkout or site-packages): make it
    # importable whatever the current directory is.
    packages = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [packages, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        detail = next((line for line in reversed(lines) if line.startswith("error")), lines[-1] if lines else "")
        raise ExportError(f"`python -m export {' '.join(args[:1])}` failed (exit {result.returncode}): {detail}")
    return result.stdout
