"""The Gradio click demo: upload, click, and compare the engine with eager PyTorch on every click.

Layout: the image (click to segment) with the click controls under it; on the right the image
source, the model / input size / engine menus and the latency panel (``demo/panel.py``).

Per browser session, a ``demo.session.Session`` lives in ``gr.State`` (its folder is deleted when
the state expires); runners and embeddings are shared through ``demo.engines.EnginePool``. Every
callback goes through ``DemoApp._run``: a problem the user can fix becomes a sentence in the status
line (and a toast), and anything unexpected is logged on the server and shown as one line, never
as a stack trace.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from importlib.resources import files
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from demo.engines import AUTO, EnginePool, Setting, TimedRunner, engine_choices, resolve_backend
from demo.overlay import render_overlay, save_mask_png
from demo.panel import clicks_frame, latency_frame, latency_html, plot_x_range
from demo.pipeline import ExportError
from demo.session import ROLES, BackendResult, Session, Step
from hrsam.images import to_rgb_uint8

LOG = logging.getLogger("hrsam.demo")
EXAMPLES = [Path(str(files("hrsam") / "assets" / "example.png"))]
SIZES = [512, 1024, 2048, 3072, 4096]
TIMING_NOTE = (
    "Times are each backend's own encoder / decoder calls; pre- and post-processing are the same code for "
    "both and not included. Magenta pixels: where the eager mask differs from the engine's."
)
CSS = """
#hrsam-canvas img { cursor: crosshair; }
.hrsam-panel table { width: 100%; border-collapse: collapse; font-size: 0.92em; }
.hrsam-panel td, .hrsam-panel th { padding: 4px 8px; border-bottom: 1px solid var(--border-color-primary); }
.hrsam-panel td:first-child { color: var(--body-text-color-subdued); }
.hrsam-note { font-size: 0.85em; color: var(--body-text-color-subdued); margin: 6px 0 0 0; }
#hrsam-banner { background: #fff4d6; border: 1px solid #e8b400; border-radius: 6px; padding: 2px 12px; }
#hrsam-status .error { color: #c0182b; font-weight: 600; }
"""
# Gradio's image fires ``select`` on the left button only. This page script turns a right click on
# the image into a negative click: it maps the pointer to image pixels the way Gradio's own image
# preview does (the image is centred, scaled down to fit, never up) and writes "x,y,nonce" into a
# hidden textbox, whose ``change`` event runs ``DemoApp.on_right_click`` (its ``input`` event does not
# fire for a value set by a script).
RIGHT_CLICK_JS = """
() => {
  document.addEventListener('contextmenu', (event) => {
    const frame = event.target.closest && event.target.closest('#hrsam-canvas');
    const img = frame && frame.querySelector('img');
    if (!img || !img.naturalWidth) return;
    event.preventDefault();
    const box = img.getBoundingClientRect();
    const scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight, 1);
    const x = Math.round((event.clientX - box.left - (box.width - img.naturalWidth * scale) / 2) / scale);
    const y = Math.round((event.clientY - box.top - (box.height - img.naturalHeight * scale) / 2) / scale);
    if (x < 0 || y < 0 || x >= img.naturalWidth || y >= img.naturalHeight) return;
    const field = document.querySelector('#hrsam-rightclick textarea, #hrsam-rightclick input');
    field.value = `${x},${y},${Date.now()}`;
    field.dispatchEvent(new Event('input', {bubbles: true}));
  });
}
"""


@dataclass(frozen=True)
class DemoConfig:
    """What the app offers and its limits (``python -m demo`` fills it from the command line)."""

    default_model: str
    default_size: int
    temp_root: Path
    default_engine: str = AUTO
    sizes: list[int] = field(default_factory=lambda: list(SIZES))
    max_pixels: int = 40_000_000
    max_file_size: str = "50mb"
    concurrency: int = 2


def read_image(path: str | Path, max_pixels: int, name: str | None = None) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB (EXIF orientation applied); ValueError with a sentence if not.

    ``name``: how messages call the file (the user's file name, not the server's copy).
    """
    name = name or Path(path).name
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(
                    f"{name} is {width} x {height} = {width * height / 1e6:.1f} megapixels; this demo accepts up "
                    f"to {max_pixels / 1e6:g} megapixels. Downscale it first."
                )
            return to_rgb_uint8(ImageOps.exif_transpose(image))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, TypeError) as error:
        if isinstance(error, Image.DecompressionBombError):
            raise ValueError(f"{name} is too large to open safely ({error}).") from None
        raise ValueError(f"{name} is not an image this demo can read (PNG, JPEG, WebP, BMP, TIFF).") from None


def image_digest(image: np.ndarray) -> str:
    """Identifies an image's pixels (and shape), so sessions showing the same image share embeddings."""
    return hashlib.sha256(str(image.shape).encode() + image.tobytes()).hexdigest()


class DemoApp:
    """The callbacks and the Blocks layout over one ``EnginePool``."""

    def __init__(self, config: DemoConfig, pool: EnginePool) -> None:
        self.config = config
        self.pool = pool

    # -- callbacks -----------------------------------------------------------------------------

    def _run(self, session: Session | None, work: Callable[[Session], str]) -> tuple:
        """Run ``work`` on the session under its lock; turn every failure into a visible message."""
        session = session or Session(root=self.config.temp_root)
        error = False
        with session.lock:
            try:
                message = work(session)
            except (ValueError, ExportError, FileNotFoundError, RuntimeError) as problem:
                message, error = (str(problem).strip().splitlines() or [type(problem).__name__])[0], True
            except Exception as problem:  # noqa: BLE001 - the UI shows one line; the log keeps the trace
                LOG.exception("demo callback failed")
                message, error = f"Unexpected error ({type(problem).__name__}: {problem}); see the server log.", True
            if error:
                gr.Warning(message)
            return self._view(session, message, error)

    def on_upload(self, path: str | None, session: Session | None, model: str, size: int, engine: str,
                  progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008 - Gradio's progress idiom
        def work(session: Session) -> str:
            if not path:
                raise ValueError("No file arrived: choose an image file to upload.")
            kept = self._keep_upload(session, Path(path))
            image = read_image(kept, self.config.max_pixels, name=Path(path).name)
            return self._load(session, image, Path(path).name, model, size, engine, progress)

        return self._run(session, work)

    def on_example(self, index: int, session: Session | None, model: str, size: int, engine: str,
                   progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
        def work(session: Session) -> str:
            path = EXAMPLES[index]
            return self._load(session, read_image(path, self.config.max_pixels), path.name, model, size, engine,
                              progress)

        return self._run(session, work)

    def on_settings(self, session: Session | None, model: str, size: int, engine: str,
                    progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
        def work(session: Session) -> str:
            if session.image is None:
                resolve_backend(engine)  # say now, not at the first upload, that it cannot run
                return self._weights_line(model)
            return self._load(session, session.image, session.image_name, model, size, engine, progress)

        outputs = self._run(session, work)
        return (*outputs, gr.update(value=self._engine_menu_value(outputs[0], engine)))

    @staticmethod
    def _engine_menu_value(session: Session, engine: str) -> str:
        """The engine menu after a settings change: back to what runs when the choice cannot run here."""
        try:
            resolve_backend(engine)
        except ValueError:
            return session.setting.backend if session.setting is not None else AUTO
        return engine

    def on_click(self, session: Session | None, mode: str, event: gr.SelectData) -> tuple:
        index = event.index if isinstance(event.index, list | tuple) and len(event.index) == 2 else (None, None)
        return self._run(session, lambda s: self._click(s, index[0], index[1], mode == "positive"))

    def on_right_click(self, session: Session | None, text: str) -> tuple:
        """A right click on the image, as "x,y,nonce" from ``RIGHT_CLICK_JS``: always a negative click."""
        parts = text.split(",")
        x, y = parts[:2] if len(parts) == 3 else (None, None)  # anything else is refused as outside the image
        return self._run(session, lambda s: self._click(s, x, y, False))

    def on_undo(self, session: Session | None) -> tuple:
        def work(session: Session) -> str:
            return "Last click undone." if session.undo() else "Nothing to undo."

        return self._run(session, work)

    def on_reset(self, session: Session | None) -> tuple:
        def work(session: Session) -> str:
            session.reset()
            return "All clicks cleared." if session.image is not None else "Nothing to reset."

        return self._run(session, work)

    def warm_up(self, model: str, size: int, engine: str) -> str:
        """Encode the bundled example and decode one click on both runners, before the first user.

        The first call of a runner pays one-time costs (graph set-up, lazy imports, index plans), so
        a mirrored copy of the example goes first; the example itself is then encoded at steady-state
        speed and stays in the embedding cache with that time, ready for the first user who picks it.
        """
        session = Session()
        image = read_image(EXAMPLES[0], self.config.max_pixels)
        for picture in (np.ascontiguousarray(image[:, ::-1]), image):
            self._load(session, picture, EXAMPLES[0].name, model, size, engine, lambda *_, **__: None)
            self._click(session, image.shape[1] // 2, image.shape[0] // 2, True)
        return session.encodings["engine"].predictor.runner.info.describe()

    # -- work ----------------------------------------------------------------------------------

    @staticmethod
    def _keep_upload(session: Session, path: Path) -> Path:
        """Move an upload out of Gradio's shared upload cache into the session's folder (one file kept).

        The session's folder is deleted with the session, so what a user uploads does not outlive it.
        """
        folder = session.workdir()
        for old in folder.glob("upload-*"):
            old.unlink()
        return Path(shutil.move(path, folder / f"upload-{path.name}"))

    def _weights_line(self, model: str) -> str:
        weights = self.pool.weights(model)
        return f"Model {model}: weights {weights.description}."

    def _load(self, session: Session, image: np.ndarray, name: str, model: str, size: int, engine: str,
              progress: gr.Progress) -> str:
        """Encode ``image`` with the engine and the eager reference (or reuse cached embeddings)."""
        backend, fallback_note = resolve_backend(engine)
        setting = Setting(model, int(size), backend)
        progress(0.05, desc=f"Opening the {backend} engine (an ONNX export runs once per model and size)")
        engine_runner = self.pool.engine(setting)
        digest = image_digest(image)
        progress(0.4, desc=f"Encoding with {backend}")
        encodings = {"engine": self.pool.encode(engine_runner, image, digest, setting.size)}
        progress(0.7, desc="Encoding with eager PyTorch")
        encodings["eager"] = self.pool.encode(self.pool.eager(model), image, digest, setting.size)
        session.load(image, name, setting, encodings, [fallback_note, engine_runner.note])
        height, width = image.shape[:2]
        return f"{name} ({width} x {height}) encoded at input size {setting.size}: click on the object."

    def _click(self, session: Session, x: Any, y: Any, positive: bool) -> str:
        """Decode one click with both backends, each with its own previous mask as the prompt."""
        click = session.check_click(x, y, positive)
        coords, labels = session.points(click)
        runners: dict[str, TimedRunner] = {role: session.encodings[role].predictor.runner for role in ROLES}
        limits = [runner.max_points for runner in runners.values() if runner.max_points is not None]
        if limits and len(coords) + 1 > min(limits):  # + SAM's padding point
            raise ValueError(f"This engine takes at most {min(limits) - 1} clicks: undo or reset to go on.")
        results = {}
        for role, runner in runners.items():
            predictor = session.encodings[role].predictor
            masks, scores, low_res = predictor.predict(coords, labels, mask_input=session.mask_prompt(role))
            results[role] = BackendResult.from_mask(masks[0], low_res, scores[0], runner.last_ms("decode"))
        session.add(Step(click, results))
        kind = "Positive" if positive else "Negative"
        return f"{kind} click at ({click.x}, {click.y}): mask of {results['engine'].area} pixels."

    # -- view ----------------------------------------------------------------------------------

    def _view(self, session: Session, message: str, error: bool) -> tuple:
        """Every output of every callback, derived from the session."""
        css_class = "error" if error else "info"
        status = f"<p class='{css_class}'>{escape(message)}</p>" if message else ""  # file names are user input
        plot = gr.LinePlot(latency_frame(session), x_lim=plot_x_range(session))
        if session.image is None:
            return session, None, status, latency_html(session, []), plot, clicks_frame(session), gr.DownloadButton(
                value=None, interactive=False)
        last = session.last
        mask = last.results["engine"].mask if last else None
        disagreement = mask ^ last.results["eager"].mask if last else None
        overlay = self._write_overlay(session, render_overlay(session.image, mask, session.clicks, disagreement))
        notes = session.notes + [session.encodings["engine"].predictor.runner.note, TIMING_NOTE]
        download = gr.DownloadButton(value=None, interactive=False)
        if mask is not None:
            folder = session.workdir()
            for old in folder.glob("*-mask-*.png"):
                old.unlink()
            path = folder / f"{Path(session.image_name).stem}-mask-{len(session.steps)}clicks.png"
            download = gr.DownloadButton(value=str(save_mask_png(mask, path)), interactive=True)
        return session, overlay, status, latency_html(session, notes), plot, clicks_frame(session), download

    @staticmethod
    def _write_overlay(session: Session, overlay: np.ndarray) -> str:
        """The overlay as a file in the session's folder: PNG up to 4 megapixels, else JPEG (quality 92).

        Encoding a 4K overlay as PNG takes most of a second on one core, JPEG a few tens of ms;
        Gradio's own encoding of an array would use its default JPEG / WebP settings instead.
        """
        folder = session.workdir()
        for old in folder.glob("overlay.*"):
            old.unlink()
        if overlay.shape[0] * overlay.shape[1] > 4_000_000:
            path, options = folder / "overlay.jpg", {"quality": 92}
        else:
            path, options = folder / "overlay.png", {}
        Image.fromarray(overlay).save(path, **options)
        return str(path)

    # -- layout --------------------------------------------------------------------------------

    def banner(self, model: str) -> str:
        weights = self.pool.weights(model)
        if not weights.random:
            return ""
        return (
            f"**The weights of {model} are random** ({weights.description}): no trained model is bundled yet, so "
            "the masks do not follow objects. The demo shows the pipeline, the engine-vs-eager agreement and "
            "the latency."
        )

    def build(self) -> gr.Blocks:
        config = self.config
        with gr.Blocks(title="HRSAM click demo", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
            state = gr.State(None, time_to_live=3600, delete_callback=lambda s: s.close() if s else None)
            gr.Markdown("## HRSAM click demo: engine vs eager PyTorch, click by click")
            banner = gr.Markdown(self.banner(config.default_model), elem_id="hrsam-banner",
                                 visible=bool(self.banner(config.default_model)))
            with gr.Row():
                with gr.Column(scale=3):
                    canvas = gr.Image(label="Click on the image to segment", interactive=False, type="filepath",
                                      height=560, elem_id="hrsam-canvas", buttons=["fullscreen"])
                    with gr.Row():
                        mode = gr.Radio([("Positive (+)", "positive"), ("Negative (−)", "negative")],
                                        value="positive", label="Left click adds (right click: negative)",
                                        elem_id="hrsam-mode", scale=5)
                        with gr.Column(scale=4, min_width=240):
                            with gr.Row():
                                undo = gr.Button("Undo", elem_id="hrsam-undo", size="md", min_width=80)
                                reset = gr.Button("Reset", elem_id="hrsam-reset", size="md", min_width=80)
                            download = gr.DownloadButton("Download mask (PNG)", interactive=False, size="md",
                                                         elem_id="hrsam-download")
                    status = gr.HTML("<p>Upload an image or pick the example to start.</p>", elem_id="hrsam-status")
                    right_click = gr.Textbox(visible="hidden", elem_id="hrsam-rightclick")
                    table = gr.Dataframe(clicks_frame(Session()), label="Clicks", interactive=False,
                                         elem_id="hrsam-clicks")
                with gr.Column(scale=2):
                    with gr.Row():
                        upload = gr.UploadButton("Upload an image", file_types=["image"], type="filepath",
                                                 elem_id="hrsam-upload", variant="primary")
                    examples = gr.Dataset(components=["image"], samples=[[str(p)] for p in EXAMPLES], type="index",
                                          label="…or pick an example", layout="gallery", elem_id="hrsam-examples")
                    with gr.Row():
                        model = gr.Dropdown(sorted(self.pool.models), value=config.default_model, label="Model")
                        size = gr.Dropdown(sorted({*config.sizes, config.default_size}), value=config.default_size,
                                           label="Input size", info="padded side S")
                        engine = gr.Dropdown(engine_choices(), value=config.default_engine, label="Engine")
                    panel = gr.HTML(latency_html(Session(), []), elem_id="hrsam-latency")
                    plot = gr.LinePlot(None, x="click", y="decoder ms", color="backend", x_axis_format="d",
                                       x_lim=plot_x_range(Session()), title="Decoder time per click", height=220,
                                       elem_id="hrsam-plot")
            gr.Markdown(
                f"Up to {config.concurrency} requests run at once; others wait in the queue. Images up to "
                f"{config.max_pixels / 1e6:g} megapixels and {config.max_file_size}. Each session's files live in "
                "its own temporary folder, deleted when the session expires."
            )
            outputs = [state, canvas, status, panel, plot, table, download]
            settings = [model, size, engine]
            upload.upload(self.on_upload, [upload, state, *settings], outputs)
            examples.click(self.on_example, [examples, state, *settings], outputs)
            for menu in settings:
                menu.input(self.on_settings, [state, *settings], [*outputs, engine])
            model.input(lambda m: gr.Markdown(self.banner(m), visible=bool(self.banner(m))), model, banner)
            canvas.select(self.on_click, [state, mode], outputs, trigger_mode="multiple")
            right_click.change(self.on_right_click, [state, right_click], outputs, trigger_mode="multiple")
            undo.click(self.on_undo, state, outputs)
            reset.click(self.on_reset, state, outputs)
        blocks.queue(default_concurrency_limit=config.concurrency, max_size=64)
        return blocks


def launch(blocks: gr.Blocks, config: DemoConfig, **kwargs: Any) -> tuple[Any, str, str | None]:
    """Start the server (``kwargs`` go to ``Blocks.launch``: server_name, server_port, share, ...)."""
    return blocks.launch(max_file_size=config.max_file_size, css=CSS, js=RIGHT_CLICK_JS, **kwargs)
