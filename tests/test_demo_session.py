"""Demo without a browser: session state (click, undo, reset), overlay drawing, export cache keys, the
shared runners and embedding cache, the latency panel, and the app's answers to bad input."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.engines import EnginePool, ModelSpec, Setting, TimedRunner, resolve_backend
from demo.overlay import (
    DISAGREEMENT,
    MASK_TINT,
    NEGATIVE,
    OUTLINE,
    POSITIVE,
    mask_outline,
    render_overlay,
    save_mask_png,
    stroke_width,
)
from demo.panel import clicks_frame, latency_frame, latency_html
from demo.pipeline import VALIDATED, ExportCache, ExportError, export_key, run_export_command
from demo.session import BackendResult, Click, Encoding, Session, Step, mask_iou
from hrsam.contract import SIDECAR_FILE

SIZE = 256


def _result(mask: np.ndarray, ms: float = 5.0) -> BackendResult:
    return BackendResult.from_mask(mask, np.full((1, 64, 64), float(mask.sum())), 0.9, ms)


def _session_with_image(height: int = 40, width: int = 60) -> Session:
    session = Session()
    encodings = {role: Encoding(None, backend=role, encode_ms=1.0, cached=False) for role in ("engine", "eager")}
    session.load(np.zeros((height, width, 3), np.uint8), "test.png", None, encodings, [])
    return session


def _step(session: Session, x: int, y: int, positive: bool, engine: np.ndarray, eager: np.ndarray) -> Step:
    step = Step(session.check_click(x, y, positive), {"engine": _result(engine), "eager": _result(eager)})
    session.add(step)
    return step


# -- session -----------------------------------------------------------------------------------


def test_click_needs_an_image_and_must_fall_inside_it() -> None:
    with pytest.raises(ValueError, match="No image yet"):
        Session().check_click(3, 4, True)
    session = _session_with_image(40, 60)
    assert session.check_click(59, 39, False) == Click(59, 39, False)
    for x, y in [(60, 10), (10, 40), (-1, 5), (None, 3), ("a", 2)]:
        with pytest.raises(ValueError, match="outside the 60 x 40 image"):
            session.check_click(x, y, True)


def test_clicks_chain_mask_prompts_and_undo_reset() -> None:
    session = _session_with_image()
    first, second = np.zeros((40, 60), bool), np.zeros((40, 60), bool)
    first[5:10, 5:10], second[5:20, 5:30] = True, True
    assert session.mask_prompt("engine") is None and session.points()[0].shape == (0, 2)
    _step(session, 7, 7, True, first, first)
    _step(session, 40, 30, False, second, first)
    coords, labels = session.points(Click(1, 2, True))
    np.testing.assert_array_equal(coords, [[7, 7], [40, 30], [1, 2]])
    np.testing.assert_array_equal(labels, [1, 0, 1])
    assert session.mask_prompt("engine")[0, 0, 0] == second.sum()  # each role chains its own logits
    assert session.mask_prompt("eager")[0, 0, 0] == first.sum()
    assert session.undo() and session.last.click == Click(7, 7, True)
    assert session.mask_prompt("engine")[0, 0, 0] == first.sum()
    session.reset()
    assert session.steps == [] and session.has_image and not session.undo()


def test_new_image_clears_clicks() -> None:
    session = _session_with_image()
    mask = np.ones((40, 60), bool)
    _step(session, 1, 1, True, mask, mask)
    session.load(np.zeros((10, 10, 3), np.uint8), "other.png", None, dict(session.encodings), ["note"])
    assert session.steps == [] and session.size == (10, 10) and session.notes == ["note"]


def test_backend_result_packs_masks_losslessly() -> None:
    mask = np.random.default_rng(0).random((37, 53)) > 0.5
    result = _result(mask)
    np.testing.assert_array_equal(result.mask, mask)
    assert result.area == mask.sum() and result.mask_bits.nbytes == (37 * 53 + 7) // 8


def test_mask_iou() -> None:
    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    assert mask_iou(a, b) == 1.0
    a[:2], b[1:3] = True, True
    assert mask_iou(a, b) == pytest.approx(4 / 12)


def test_latency_rows_and_panel() -> None:
    session = _session_with_image()
    assert latency_frame(session) is None and len(clicks_frame(session)) == 0
    mask = np.zeros((40, 60), bool)
    mask[:10] = True
    other = mask.copy()
    other[10:20] = True
    _step(session, 3, 3, True, mask, other)
    frame = latency_frame(session)
    assert list(frame["backend"]) == ["engine (engine)", "eager PyTorch"] and list(frame["click"]) == [1, 1]
    table = clicks_frame(session)
    assert table.loc[0, "IoU"] == pytest.approx(0.5) and table.loc[0, "type"] == "+"


def test_panel_names_backends_and_times() -> None:
    class Runner:
        info = type("Info", (), {"backend": "onnxruntime", "model": "hrsam_tiny", "precision": "fp32",
                                 "device": "cpu", "input_size": 256})()

    predictor = type("Predictor", (), {"runner": Runner()})()
    session = Session()
    encodings = {"engine": Encoding(predictor, "onnxruntime", 12.5, False),
                 "eager": Encoding(predictor, "eager", 30, True)}
    session.load(np.zeros((8, 8, 3), np.uint8), "a.png", None, encodings, [])
    mask = np.ones((8, 8), bool)
    _step(session, 1, 1, True, mask, mask)
    html = latency_html(session, ["a <note>"])
    assert "id='engine-encode-ms'>12.5 ms" in html and "cached embedding" in html
    assert "id='engine-decode-ms'>5.0 ms" in html and "1.0000 on the last click" in html
    assert "onnxruntime" in html and "input 256" in html and "a &lt;note&gt;" in html


def test_workdir_is_per_session_and_removed_on_close(tmp_path: Path) -> None:
    one, two = Session(root=tmp_path), Session(root=tmp_path)
    assert one.workdir() != two.workdir() and one.workdir().parent == tmp_path
    (one.workdir() / "mask.png").write_bytes(b"x")
    folder = one.workdir()
    one.close()
    assert not folder.exists() and two.workdir().exists()


# -- overlay -----------------------------------------------------------------------------------


def test_overlay_tints_outlines_and_marks_clicks() -> None:
    image = np.full((200, 300, 3), 100, np.uint8)
    mask = np.zeros((200, 300), bool)
    mask[50:150, 50:250] = True
    clicks = [Click(100, 100, True), Click(280, 20, False)]
    out = render_overlay(image, mask, clicks)
    assert out.shape == image.shape and out.dtype == np.uint8
    expected_tint = 0.55 * 100 + 0.45 * np.array(MASK_TINT)
    np.testing.assert_allclose(out[120, 200], expected_tint, atol=1)  # inside, away from the outline and clicks
    np.testing.assert_array_equal(out[10, 10], [100, 100, 100])  # outside: untouched
    np.testing.assert_array_equal(out[50, 150], OUTLINE)  # on the boundary
    assert tuple(out[100 + 3, 100 - 3]) == POSITIVE and tuple(out[20 + 3, 280 - 3]) == NEGATIVE
    np.testing.assert_array_equal(out[100, 100], OUTLINE)  # the + sign's centre


def test_outline_band_follows_the_boundary_only() -> None:
    mask = np.zeros((100, 100), bool)
    mask[20:80, 20:80] = True
    band = mask_outline(mask, stroke_width(100, 100))
    assert band[20, 50] and band[19, 50] and band[50, 79]
    assert not band[50, 50] and not band[5, 5]


def test_overlay_marks_disagreement_and_checks_shapes() -> None:
    image = np.zeros((20, 30, 3), np.uint8)
    differ = np.zeros((20, 30), bool)
    differ[2, 3] = True
    np.testing.assert_array_equal(render_overlay(image, None, [], differ)[2, 3], DISAGREEMENT)
    with pytest.raises(ValueError, match="boolean 20 x 30"):
        render_overlay(image, np.zeros((20, 31), bool), [])


def test_mask_png_is_full_resolution_0_or_255(tmp_path: Path) -> None:
    mask = np.zeros((33, 47), bool)
    mask[3:9, 4:20] = True
    with Image.open(save_mask_png(mask, tmp_path / "m.png")) as saved:
        array = np.asarray(saved)
        assert saved.mode == "L" and saved.size == (47, 33)
    np.testing.assert_array_equal(array, mask.astype(np.uint8) * 255)


# -- export cache ------------------------------------------------------------------------------


def _fake_export(directory: Path, model: str, size: int, validated: bool) -> None:
    directory.mkdir(parents=True)
    (directory / SIDECAR_FILE).write_text("{}")
    if validated:
        (directory / VALIDATED).write_text("ok")


def test_export_cache_is_keyed_by_model_weights_and_size(tmp_path: Path) -> None:
    spec, sha = ModelSpec("hrsam_tiny"), "ab" * 32
    assert export_key("hrsam_tiny", sha, 512) == "hrsam_tiny-abababababab-512"
    assert export_key("hrsam_tiny", sha, 512) not in {export_key("hrsam_tiny", "cd" * 32, 512),
                                                      export_key("hrsam_tiny", sha, 1024)}
    cache = ExportCache(tmp_path, log=lambda _: None)
    assert cache.cached(spec, 512, sha) is None
    _fake_export(tmp_path / export_key("hrsam_tiny", sha, 512), "hrsam_tiny", 512, validated=False)
    assert cache.cached(spec, 512, sha) is None  # exported but never validated: not reused
    (tmp_path / export_key("hrsam_tiny", sha, 512) / VALIDATED).write_text("ok")
    assert cache.cached(spec, 512, sha) == tmp_path / export_key("hrsam_tiny", sha, 512)
    assert cache.ensure(spec, 512, sha) == cache.cached(spec, 512, sha)  # no export command runs
    assert cache.cached(spec, 1024, sha) is None and cache.cached(spec, 512, "cd" * 32) is None


def test_export_arguments_select_the_same_weights() -> None:
    assert ModelSpec("hrsam_tiny").export_args() == []  # the package default, as load_model() picks it
    assert ModelSpec("hrsam_tiny", "hrsam_tiny", Path("w.pth")).export_args() == [
        "--model", "hrsam_tiny", "--checkpoint", "w.pth"]


def test_failed_export_command_is_one_line() -> None:
    with pytest.raises(ExportError, match=r"python -m export check.*failed \(exit 2\)"):
        run_export_command(["check", "/nonexistent/export"])


# -- runners and embeddings --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> EnginePool:
    def no_exports(*_: object) -> Path:
        raise AssertionError("eager runners need no export")

    return EnginePool({"hrsam_tiny": ModelSpec("hrsam_tiny", "hrsam_tiny")}, no_exports, device="cpu")


def test_embeddings_are_cached_per_image_and_shared(pool: EnginePool) -> None:
    runner = pool.eager("hrsam_tiny")
    assert pool.engine(Setting("hrsam_tiny", SIZE, "eager")) is runner and pool.weights("hrsam_tiny").random
    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    first = pool.encode(runner, image, "digest-1", SIZE)
    again = pool.encode(runner, image, "digest-1", SIZE)
    assert not first.cached and again.cached and again.predictor is first.predictor
    assert again.encode_ms == first.encode_ms > 0
    assert pool.encode(runner, image, "digest-2", SIZE).predictor is not first.predictor


def test_timed_runner_times_each_thread_separately(pool: EnginePool) -> None:
    predictor = pool.encode(pool.eager("hrsam_tiny"), np.zeros((32, 32, 3), np.uint8), "zeros", SIZE).predictor
    runner: TimedRunner = predictor.runner
    times: dict[str, float] = {}

    def click(name: str) -> None:
        predictor.predict(np.array([[5.0, 5.0]]), np.array([1]))
        times[name] = runner.last_ms("decode")

    threads = [threading.Thread(target=click, args=(f"t{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(times) == {"t0", "t1"} and all(ms > 0 for ms in times.values())
    with pytest.raises(AttributeError):
        runner.last_ms("decode")  # this thread decoded nothing


def test_unknown_or_unavailable_backend_is_a_sentence() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("nope")
    with pytest.raises(ValueError, match="cannot run on this machine"):
        resolve_backend("tensorrt")


# -- the app's callbacks (no browser) ----------------------------------------------------------


@pytest.fixture(scope="module")
def app(pool: EnginePool, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
    from demo.app import DemoApp, DemoConfig

    return DemoApp(DemoConfig("hrsam_tiny", SIZE, tmp_path_factory.mktemp("sessions"), max_pixels=100_000), pool)


def _no_progress(*_: object, **__: object) -> None:
    return None


def _status(outputs: tuple) -> str:
    return outputs[2]


def test_bad_uploads_give_messages(app, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    message = _status(app.on_upload(str(text), None, "hrsam_tiny", SIZE, "eager", _no_progress))
    assert "notes.png is not an image this demo can read" in message  # the user's file name, not the copy's
    tricky = tmp_path / "<b>x.png"
    tricky.write_text("not an image")
    assert "&lt;b&gt;x.png is not an image" in _status(app.on_upload(str(tricky), None, "hrsam_tiny", SIZE,
                                                                      "eager", _no_progress))  # shown as text
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.new("RGB", (400, 300)).save(big)
    Image.new("RGB", (40, 30)).save(small)
    message = _status(app.on_upload(str(big), None, "hrsam_tiny", SIZE, "eager", _no_progress))
    assert "400 x 300 = 0.1 megapixels; this demo accepts up to 0.1 megapixels" in message
    assert "No file arrived" in _status(app.on_upload(None, None, "hrsam_tiny", SIZE, "eager", _no_progress))
    message = _status(app.on_upload(str(small), None, "hrsam_tiny", SIZE, "tensorrt", _no_progress))
    assert "tensorrt backend cannot run on this machine" in message


def test_click_flow_and_bad_clicks(app, tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    event = type("Select", (), {"index": [10, 20]})()
    outputs = app.on_click(None, "positive", event)
    assert "No image yet" in _status(outputs) and outputs[1] is None
    outputs = app.on_upload(str(path), None, "hrsam_tiny", SIZE, "eager", _no_progress)
    session = outputs[0]
    assert "encoded at input size 256" in _status(outputs)
    with Image.open(outputs[1]) as overlay:  # the overlay, written into the session's folder
        assert overlay.size == (80, 60) and Path(outputs[1]).parent == session.workdir()
    assert not path.exists() and (session.workdir() / "upload-small.png").is_file()  # moved into the session
    outputs = app.on_click(session, "positive", event)
    assert "Positive click at (10, 20)" in _status(outputs)
    assert outputs[6].value["orig_name"] == "small-mask-1clicks.png"
    assert (session.workdir() / "small-mask-1clicks.png").is_file()  # the session's own folder
    assert "Negative click at (30, 40)" in _status(app.on_right_click(session, "30,40,12345"))
    assert "outside the 80 x 60 image" in _status(app.on_right_click(session, "300,40,1"))
    assert "outside" in _status(app.on_right_click(session, "garbage"))
    assert len(session.steps) == 2 and len(outputs[5]) == 1
    assert "undone" in _status(app.on_undo(session)) and len(session.steps) == 1
    assert "cleared" in _status(app.on_reset(session)) and session.steps == []
    assert "Nothing to undo" in _status(app.on_undo(session))


def test_settings_change_reencodes_and_refuses_engines_that_cannot_run(app, tmp_path: Path) -> None:
    path = tmp_path / "pic.png"
    Image.fromarray(np.full((50, 70, 3), 90, np.uint8)).save(path)
    session = app.on_upload(str(path), None, "hrsam_tiny", SIZE, "eager", _no_progress)[0]
    app.on_click(session, "positive", type("Select", (), {"index": [5, 5]})())
    outputs = app.on_settings(session, "hrsam_tiny", 512, "eager", _no_progress)
    assert "encoded at input size 512" in _status(outputs) and session.steps == [] and outputs[-1]["value"] == "eager"
    outputs = app.on_settings(session, "hrsam_tiny", 512, "tensorrt", _no_progress)
    assert "cannot run on this machine" in _status(outputs) and outputs[-1]["value"] == "eager"  # menu goes back
    assert session.setting.size == 512 and session.has_image
