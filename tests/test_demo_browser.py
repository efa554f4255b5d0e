"""The click demo in a real browser: headless Chromium driven by Playwright.

Chromium is Debian's (``apt-get install chromium``; ``HRSAM_CHROMIUM`` points elsewhere): Playwright
cannot download its own browser on these machines. The app runs in this process on a free localhost
port with ``hrsam_tiny`` at input size 256 and the engine "auto" picks here (ONNX Runtime on a CPU
machine, exported through the demo's own pipeline into a temporary cache). Screenshots go to
``outputs/test-artifacts/``.

Playwright waits are bounded by ``HANG_GUARD_MS`` only so that a hung server fails the run instead
of blocking CI; nothing here checks speed.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.engines import EnginePool, ModelSpec, Setting, resolve_auto
from demo.pipeline import ExportCache
from demo.session import mask_iou
from hrsam.checkpoint import load_model, weights_sha256
from hrsam.images import load_image
from hrsam.predictor import HRSAMPredictor

gradio = pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

CHROMIUM = Path(os.environ.get("HRSAM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "outputs" / "test-artifacts"
MODEL, SIZE = "hrsam_tiny", 256
HANG_GUARD_MS = 600_000
EXAMPLE = Path(__file__).resolve().parents[1] / "hrsam" / "assets" / "example.png"
MAX_PIXELS = 1_000_000

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="Chromium is missing: apt-get install chromium"),
    pytest.mark.slow,  # an ONNX export at 256 and a browser: about a minute on 2 cores
]


@dataclass
class Server:
    url: str
    cache: ExportCache
    setting: Setting
    log: list[str]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from demo.app import DemoApp, DemoConfig, launch

    root = tmp_path_factory.mktemp("demo")
    log: list[str] = []
    cache = ExportCache(root / "exports", log=log.append)
    pool = EnginePool({MODEL: ModelSpec(MODEL, MODEL)}, cache.ensure, device="cpu")
    config = DemoConfig(MODEL, SIZE, root / "sessions", max_pixels=MAX_PIXELS, max_file_size="2mb")
    app = DemoApp(config, pool)
    setting = Setting(MODEL, SIZE, resolve_auto()[0])
    app.warm_up(MODEL, SIZE, "auto")  # exports (once) and opens both runners before any page loads
    blocks = app.build()
    _, url, _ = launch(blocks, config, server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True,
                       quiet=True)
    yield Server(url, cache, setting, log)
    blocks.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:  # launch() gives each browser a fresh, empty profile
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


# -- helpers -----------------------------------------------------------------------------------


def _scene(height: int, width: int, seed: int) -> np.ndarray:
    """A picture with a few flat shapes on a gradient (any picture works: the weights are random)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    image = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    for _ in range(3):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(20, 60)
        image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return image


def _save(image: np.ndarray, path: Path) -> Path:
    Image.fromarray(image).save(path)
    return path


def _open(browser, server: Server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(HANG_GUARD_MS)
    page.goto(server.url)
    page.wait_for_selector("#hrsam-upload")
    return page


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _status(page) -> str:
    return page.locator("#hrsam-status").inner_text()


def _wait_status(page, text: str) -> str:
    page.wait_for_function("text => document.querySelector('#hrsam-status').innerText.includes(text)", arg=text)
    assert "Traceback" not in page.content()
    return _status(page)


def _upload(page, path: Path) -> None:
    page.set_input_files("input[type=file][accept='image/*']", str(path))


def _click(page, x: int, y: int, button: str = "left") -> None:
    """Click image pixel (x, y): page coordinates from the displayed image's box, as Gradio maps them back."""
    page.wait_for_function("() => { const i = document.querySelector('#hrsam-canvas img'); "
                           "return i && i.complete && i.naturalWidth > 0; }")
    point = page.evaluate(
        """([x, y]) => {
            const img = document.querySelector('#hrsam-canvas img'), box = img.getBoundingClientRect();
            const s = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight, 1);
            return [box.left + (box.width - img.naturalWidth * s) / 2 + (x + 0.2) * s,
                    box.top + (box.height - img.naturalHeight * s) / 2 + (y + 0.2) * s];
        }""",
        [x, y],
    )
    page.mouse.click(point[0], point[1], button=button)


def _canvas_size(page) -> tuple[int, int]:
    width, height = page.evaluate("() => { const i = document.querySelector('#hrsam-canvas img'); "
                                  "return [i.naturalWidth, i.naturalHeight]; }")
    return height, width


ROWS_JS = ("() => Array.from(document.querySelectorAll('#hrsam-clicks [role=row]'))"
           ".filter(row => /^\\s*\\d/.test(row.innerText)).length")


def _table_rows(page) -> int:
    """Click rows in the clicks table (Gradio's table renders rows as role=row elements; the header is skipped)."""
    return page.evaluate(ROWS_JS)


def _ms(page, cell: str) -> float:
    text = page.locator(f"#{cell}").inner_text()
    return float(text.split(" ms")[0])


def _download(page, tmp_path: Path) -> tuple[str, np.ndarray]:
    with page.expect_download() as info:
        page.click("#hrsam-download")
    target = tmp_path / info.value.suggested_filename
    info.value.save_as(target)
    with Image.open(target) as png:
        assert png.mode == "L"
        return info.value.suggested_filename, np.asarray(png)


def _expected_mask(image: np.ndarray, clicks: list[tuple[int, int, int]]) -> np.ndarray:
    """The eager mask of a click session, computed here independently of the app."""
    predictor = HRSAMPredictor(load_model(MODEL).model)
    predictor.set_image(image, target_size=SIZE)
    logits = None
    for k in range(1, len(clicks) + 1):
        coords = np.array([c[:2] for c in clicks[:k]], dtype=float)
        labels = np.array([c[2] for c in clicks[:k]])
        masks, _, low_res = predictor.predict(coords, labels, mask_input=logits)
        logits = low_res
    return masks[0]


# -- tests -------------------------------------------------------------------------------------


def test_bad_input_gives_visible_messages(server: Server, browser, tmp_path: Path) -> None:
    page = _open(browser, server)
    (tmp_path / "notes.txt").write_text("not a picture")
    _upload(page, tmp_path / "notes.txt")
    page.get_by_text("Invalid file type").first.wait_for()  # Gradio's own check of the extension
    (tmp_path / "fake.png").write_text("not a picture either")
    _upload(page, tmp_path / "fake.png")
    assert "fake.png is not an image this demo can read" in _wait_status(page, "not an image")
    _upload(page, _save(np.zeros((1000, 1100, 3), np.uint8), tmp_path / "wide.png"))
    assert "1100 x 1000 = 1.1 megapixels; this demo accepts up to 1 megapixels" in _wait_status(page, "megapixels")
    noise = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    _upload(page, _save(noise, tmp_path / "noise.png"))  # about 3 MB, over the server's 2 MB limit
    page.get_by_text("exceed the maximum allowed size").first.wait_for()  # Gradio refuses it
    page.locator("#hrsam-undo").click()
    assert "Nothing to undo" in _wait_status(page, "Nothing to undo")
    _shot(page, "demo-bad-input")
    page.context.close()


def test_click_session_in_the_browser(server: Server, browser, tmp_path: Path) -> None:
    page = _open(browser, server)
    _shot(page, "demo-0-empty")
    image = load_image(EXAMPLE)
    _upload(page, EXAMPLE)
    assert "example.png (640 x 480) encoded at input size 256" in _wait_status(page, "encoded")
    assert server.setting.backend in page.locator("#engine-backend").inner_text()
    assert _ms(page, "engine-encode-ms") > 0 and _ms(page, "eager-encode-ms") > 0

    _click(page, 220, 260)
    _wait_status(page, "Positive click at (220, 260)")
    assert _ms(page, "engine-decode-ms") > 0 and _ms(page, "eager-decode-ms") > 0
    page.locator("#hrsam-mode label").filter(has_text="Negative").click()  # the visible toggle
    _click(page, 460, 280)
    _wait_status(page, "Negative click at (460, 280)")
    page.locator("#hrsam-mode label").filter(has_text="Positive").click()
    _click(page, 470, 90, button="right")  # the right button is negative whatever the toggle says
    _wait_status(page, "Negative click at (470, 90)")
    assert _table_rows(page) == 3
    iou = float(page.locator("#mask-iou").inner_text().split(" ")[0])
    assert iou >= 0.99  # engine and eager agree on every click

    page.click("#hrsam-undo")
    _wait_status(page, "Last click undone")
    page.wait_for_function(f"() => ({ROWS_JS})() === 2")
    page.mouse.move(0, 0)
    _shot(page, "demo-1-two-clicks")  # docs/demo.png is this screenshot

    name, png = _download(page, tmp_path)
    assert name == "example-mask-2clicks.png" and png.shape == (480, 640)
    assert set(np.unique(png)) <= {0, 255}
    expected = _expected_mask(image, [(220, 260, 1), (460, 280, 0)])
    assert mask_iou(png == 255, expected) >= 0.99
    page.context.close()


def test_two_sessions_do_not_see_each_other(server: Server, browser, tmp_path: Path) -> None:
    scene = _scene(300, 200, seed=3)
    sessions = {"a": (scene, (150, 260), "a.png"), "b": (load_image(EXAMPLE), (300, 200), "example.png")}
    pages = {name: _open(browser, server) for name in sessions}
    _upload(pages["a"], _save(scene, tmp_path / "a.png"))  # both images in flight at once
    pages["b"].locator("#hrsam-examples button").first.click()  # the bundled example
    for name, (_, _, file_name) in sessions.items():
        _wait_status(pages[name], f"{file_name} (")
    for name, (_, (x, y), _) in sessions.items():  # both clicks in flight at once
        _click(pages[name], x, y)
    for name, (image, (x, y), file_name) in sessions.items():
        page = pages[name]
        _wait_status(page, f"Positive click at ({x}, {y})")
        _shot(page, f"demo-two-sessions-{name}")
        assert _canvas_size(page) == image.shape[:2] and _table_rows(page) == 1
        downloaded, png = _download(page, tmp_path)
        assert downloaded == f"{Path(file_name).stem}-mask-1clicks.png" and png.shape == image.shape[:2]
        assert mask_iou(png == 255, _expected_mask(image, [(x, y, 1)])) >= 0.99
    pages["a"].click("#hrsam-reset")
    _wait_status(pages["a"], "All clicks cleared")
    assert "Positive click at (300, 200)" in _status(pages["b"]) and _table_rows(pages["b"]) == 1
    for page in pages.values():
        page.context.close()


def test_second_launch_reuses_the_export(server: Server) -> None:
    if server.setting.backend != "onnxruntime":
        pytest.skip(f"the engine here is {server.setting.backend}, which needs no ONNX export")
    spec, sha256 = ModelSpec(MODEL, MODEL), weights_sha256(load_model(MODEL).model)
    first = server.cache.cached(spec, SIZE, sha256)
    again = ExportCache(server.cache.root, log=server.log.append)  # what a second launch builds
    assert first is not None and again.ensure(spec, SIZE, sha256) == first
    assert server.log[-1] == f"export cached: {first}"
