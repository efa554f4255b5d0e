"""``python -m demo`` (console script ``hrsam-demo``): export once, validate, then serve the click demo.

The whole pipeline behind ``make demo``: load the model (the bundled default unless ``--model`` /
``--checkpoint``), make sure an exported engine for it exists (``python -m export onnx``, a
TensorRT engine where TensorRT runs, ``python -m export check``; cached by model, weights and
size, see ``demo/pipeline.py``), open the engine and the eager reference, and start Gradio on
localhost. It prints the URL to open. ``--export-dir`` uses an existing export instead.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from demo.engines import AUTO, DEFAULT_PRECISION, FILE_BACKENDS, EnginePool, ModelSpec, resolve_backend
from demo.pipeline import ExportCache, ExportError, default_cache_dir
from hrsam.checkpoint import DEFAULT_MODEL, read_config
from hrsam.contract import Sidecar
from hrsam.modeling.configs import CONFIGS

if TYPE_CHECKING:  # imported in main(), after GRADIO_TEMP_DIR is set
    from demo.app import DemoApp


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default=None,
                        help=f"model config (default: the bundled default, {DEFAULT_MODEL})")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights: our .safetensors or the authors' .pth")
    parser.add_argument("--size", type=int, default=None,
                        help="padded input side S the engine is exported for (default 1024, or --export-dir's)")
    parser.add_argument("--engine", default=AUTO, choices=[AUTO, "tensorrt", "compiled", "onnxruntime", "eager"],
                        help="engine backend: auto is TensorRT, else compiled on a GPU, else ONNX Runtime")
    parser.add_argument("--export-dir", type=Path, default=None, help="use this export (python -m export onnx)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"where exports are cached (default {default_cache_dir()})")
    parser.add_argument("--no-export", action="store_true",
                        help="start at once; export when a user first asks for an engine")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"],
                        help="engine precision (default: fp16 TensorRT, bf16 compiled; ONNX Runtime is fp32)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 for the network)")
    parser.add_argument("--port", type=int, default=None, help="port (default: the first free from 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests served at once (Gradio queue)")
    parser.add_argument("--max-megapixels", type=float, default=40.0, help="largest image accepted")
    return parser


def default_spec(args: argparse.Namespace, pinned: Sidecar | None) -> ModelSpec:
    """The launch model: its config name and how ``load_model`` / ``python -m export`` select its weights.

    With ``--export-dir`` and no ``--model``, the export's own model and checkpoint (its sidecar says).
    """
    if args.checkpoint is not None and args.checkpoint.suffix == ".safetensors":
        return ModelSpec(read_config(args.checkpoint).name, args.model, args.checkpoint)
    if pinned is not None and args.model is None:
        checkpoint = args.checkpoint or pinned.source.get("checkpoint")
        return ModelSpec(pinned.model, pinned.model, Path(checkpoint) if checkpoint else None)
    return ModelSpec(args.model or DEFAULT_MODEL, args.model, args.checkpoint)


def prepare(args: argparse.Namespace, app: DemoApp, spec: ModelSpec, size: int) -> None:
    """Export (or find) the launch engine, validate it, and warm both runners up, so the first user waits less."""
    backend, note = resolve_backend(args.engine)
    print(f"engine backend: {backend}" + (f" ({note})" if note else ""), flush=True)
    print(f"model {spec.name}, weights {app.pool.weights(spec.name).description}", flush=True)
    if args.no_export and backend in FILE_BACKENDS:
        return
    print(f"warming up on the bundled example: {app.warm_up(spec.name, size, args.engine)}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.concurrency < 1 or (args.size is not None and (args.size <= 0 or args.size % 16)):
        parser.error("--concurrency must be at least 1 and --size a positive multiple of 16")
    temp_root = Path(tempfile.mkdtemp(prefix="hrsam-demo-"))
    atexit.register(shutil.rmtree, temp_root, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = str(temp_root / "gradio")  # Gradio reads it when imported
    try:
        from demo.app import DemoApp, DemoConfig, launch
    except ImportError as error:
        print(f"error: the demo needs Gradio ({error}); install it with: pip install -e '.[demo]'", file=sys.stderr)
        return 2
    try:
        pinned = Sidecar.read(args.export_dir) if args.export_dir else None
        size = args.size or (pinned.input_size if pinned else 1024)
        spec = default_spec(args, pinned)
        models = {name: ModelSpec(name, name) for name in CONFIGS} | {spec.name: spec}
        cache = ExportCache(args.cache_dir or default_cache_dir(), pinned=args.export_dir,
                            engine_precision=args.precision or DEFAULT_PRECISION["tensorrt"])
        pool = EnginePool(models, cache.ensure, device=args.device, precision=args.precision)
        config = DemoConfig(spec.name, size, temp_root, default_engine=args.engine,
                            max_pixels=int(args.max_megapixels * 1e6), concurrency=args.concurrency)
        app = DemoApp(config, pool)
        prepare(args, app, spec, size)
        blocks = app.build()
    except (ValueError, FileNotFoundError, ExportError, RuntimeError) as error:
        print(f"error: {(str(error).strip().splitlines() or [type(error).__name__])[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # during a long first export
        print("interrupted", file=sys.stderr)
        return 130
    _, url, share_url = launch(blocks, config, server_name=args.host, server_port=args.port, share=args.share,
                               prevent_thread_lock=True, quiet=True)
    print(f"HRSAM demo running: open {url}" + (f" (public link {share_url})" if share_url else ""), flush=True)
    print("press Ctrl+C to stop", flush=True)
    blocks.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
