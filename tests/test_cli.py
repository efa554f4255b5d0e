"""The command line as a new user meets it: every bad input is refused before the encoder runs.

Each refusal test goes through the real entry point (``hrsam.cli.main``, once through a
``python -m hrsam`` subprocess and once through the ``hrsam`` console-script function) and checks
the exit status 2, a single line on stderr naming the problem, that nothing was printed or written
to the output folder, and (``no_encoder``) that the encoder was never called. Runs that do reach the
encoder use ``hrsam_tiny`` at target size 256.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hrsam import cli
from hrsam.checkpoint import BUNDLED_CHECKPOINT, load_model, save_checkpoint
from hrsam.runner import EagerRunner

REPO = Path(__file__).resolve().parents[1]
FAST = ["--target-size", "256", "--device", "cpu"]


@pytest.fixture
def no_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any encoder call fails the test: refusals must come before the expensive work."""

    def encode(self: EagerRunner, images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the encoder ran before the input was refused")

    monkeypatch.setattr(EagerRunner, "encode", encode)


def refused(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``segment`` with ``args`` into ``tmp_path/out``; assert a clean refusal and return its one line."""
    out = tmp_path / "out"
    status = cli.main(["segment", "--out", str(out), *args])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == "", "nothing is printed (no model line, no timings) before a refusal"
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert not out.exists(), "nothing is written to the output folder"
    return lines[0]


def run_ok(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, np.ndarray]:
    """Run ``segment`` successfully; return what it printed and the mask it wrote."""
    status = cli.main(["segment", "--out", str(out), *FAST, *args])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out, np.asarray(Image.open(out / "mask.png"))


@pytest.fixture(scope="module")
def random_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    """A named config without a checkpoint (random weights, seed 0) at 256: what it printed and its mask."""
    out = tmp_path_factory.mktemp("random") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["segment", "--model", "hrsam_tiny", "--out", str(out), *FAST]) == 0
    return printed.getvalue(), np.asarray(Image.open(out / "mask.png"))


# --- the table, one test per row -------------------------------------------------------


def _partial_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint that fits 0 of hrsam_tiny's 367 weights (SAM's own key names, for instance)."""
    path = tmp_path / "other.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(4)}, path)
    return path


def test_partial_checkpoint_is_refused(no_encoder: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _partial_checkpoint(tmp_path)
    line = refused(["--checkpoint", str(path)], tmp_path, capsys)
    assert str(path) in line and "missing 367 [encoder." in line and "--allow-partial" in line


def test_partial_checkpoint_with_allow_partial_says_weights_are_random(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _partial_checkpoint(tmp_path)
    printed, mask = run_ok(["--checkpoint", str(path), "--allow-partial"], tmp_path / "out", capsys)
    assert "367 of 367 weights left random" in printed.splitlines()[0]
    assert printed.splitlines()[-1].startswith("NOTE: 367 of 367 weights are random") and mask.shape == (480, 640)


def test_own_state_dict_loads_with_identical_output(
    random_run: tuple[str, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "weights.pth"
    torch.save(load_model("hrsam_tiny", seed=0).model.state_dict(), path)
    printed, mask = run_ok(["--checkpoint", str(path)], tmp_path / "out", capsys)
    assert "model hrsam_tiny (from the checkpoint)" in printed and "random" not in printed.lower()
    np.testing.assert_array_equal(mask, random_run[1])


def test_safetensors_of_another_model_is_refused(
    no_encoder: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(load_model("hrsam_tiny").model, path)
    line = refused(["--model", "hrsampp_vit_b", "--checkpoint", str(path)], tmp_path, capsys)
    assert "holds model 'hrsam_tiny', not 'hrsampp_vit_b'" in line


def test_safetensors_without_model_says_which_model_ran(
    random_run: tuple[str, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(load_model("hrsam_tiny", seed=0).model, path)
    printed, mask = run_ok(["--checkpoint", str(path)], tmp_path / "out", capsys)
    assert printed.startswith(f"model hrsam_tiny (from the checkpoint), weights: {path} (sha256 ")
    np.testing.assert_array_equal(mask, random_run[1])


def test_corrupt_safetensors(no_encoder: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    line = refused(["--checkpoint", str(path)], tmp_path, capsys)
    assert f"{path} is not a readable safetensors file" in line


def test_text_file_named_png(no_encoder: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image\n")
    line = refused(["--image", str(path), "--points", "1,1,1"], tmp_path, capsys)
    assert f"{path} is not an image file" in line


def test_cuda_device_without_cuda(
    no_encoder: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = refused(["--device", "cuda"], tmp_path, capsys)
    assert "CUDA is not available" in line and "--device cpu" in line


def test_out_is_an_existing_file(no_encoder: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "result.png"
    path.write_bytes(b"keep me")
    status = cli.main(["segment", "--out", str(path), *FAST])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == "" and captured.err.count("\n") == 1
    assert f"--out {path} is a file" in captured.err
    assert path.read_bytes() == b"keep me"


def test_click_outside_the_image(no_encoder: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(["--points", "100,100,1;700,20,1"], tmp_path, capsys)
    assert "point (700, 20) is outside the 640 x 480 image" in line


@pytest.mark.parametrize("form", [["--points", "-5,10,1"], ["--points=-5,10,1"]])
def test_negative_coordinates_are_parsed(
    form: list[str], no_encoder: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-5,10,1`` is read as a click (then refused for being outside), not as an unknown option."""
    line = refused(form, tmp_path, capsys)
    assert "point (-5, 10) is outside" in line


def test_corrupt_pth(no_encoder: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"\x80\x02garbage")
    line = refused(["--checkpoint", str(path)], tmp_path, capsys)
    assert f"{path} is not a readable PyTorch checkpoint" in line and "weights_only" not in line


# --- the other checks before work --------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.mkdir(), "is a folder, not an image file"),
        (lambda path: path.write_bytes(_png_bytes()[:300]), "cannot read image"),
        (lambda path: None, "image file not found"),
    ],
    ids=["folder", "truncated", "missing"],
)
def test_unreadable_images(make, message: str, no_encoder: None, tmp_path: Path, capsys) -> None:
    path = tmp_path / "image.png"
    make(path)
    line = refused(["--image", str(path), "--points", "1,1,1"], tmp_path, capsys)
    assert str(path) in line and message in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--points", "1,2"], "expected 'x,y,label'"),
        (["--image", str(cli.EXAMPLE_IMAGE)], "--points is needed with --image"),
        (["--target-size", "1000"], "multiple of 16"),
        (["--benchmark", "-1"], "--benchmark: must be at least 0"),
        (["--threads", "0"], "--threads: must be at least 1"),
        (["--model", "vit_h"], "invalid choice: 'vit_h'"),
        (["--device", "tpu"], "unknown --device 'tpu'"),
        (["--checkpoint", "missing.pth"], "checkpoint not found: missing.pth"),
    ],
)
def test_other_bad_input(args: list[str], message: str, no_encoder: None, tmp_path: Path, capsys) -> None:
    assert message in refused(args, tmp_path, capsys)


def test_out_under_a_file(no_encoder: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    assert cli.main(["segment", "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "cannot be created" in capsys.readouterr().err


# --- successful runs, help, entry points -------------------------------------------------------


def test_default_run_uses_the_bundled_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    printed, mask = run_ok([], tmp_path / "out", capsys)
    assert printed.splitlines()[0].startswith("model hrsam_tiny, weights: ")
    assert str(BUNDLED_CHECKPOINT) in printed and "NOTE" not in printed and mask.shape == (480, 640)


def test_named_model_runs_random_weights_and_says_so(random_run: tuple[str, np.ndarray]) -> None:
    printed, mask = random_run
    lines = printed.splitlines()
    assert lines[0] == "model hrsam_tiny, weights: random (seed 0)"
    assert sum(line.startswith("encoder: ") for line in lines) == 1 and "median" not in printed
    assert [line.split(" (")[0] for line in lines if line.startswith("click")] == ["click 1", "click 2", "click 3"]
    assert lines[-1].startswith("NOTE: the weights are random")
    assert mask.shape == (480, 640) and set(np.unique(mask)) <= {0, 255}


def test_benchmark_and_threads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        printed, _ = run_ok(["--benchmark", "2", "--threads", "1", "--points", "220,260,1"], tmp_path / "o", capsys)
    finally:
        torch.set_num_threads(threads)
    assert "device cpu, torch threads 1" in printed
    assert "encoder: " in printed and "median of 2" in printed.split("encoder: ")[1].splitlines()[0]
    assert printed.count("median of 2") == 2  # the encoder and the one click


def test_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["segment", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--target-size S", "--device DEVICE", "--benchmark N", "--out DIR", "--seed SEED"):
        assert option in text
    for default in ("(default: 1024)", "(default: auto)", "(default: 0)", "(default: outputs/segment)"):
        assert default in text
    assert "auto is cuda when available" in text and "torch's own choice" in text and "random weights" in text


def test_subprocess_refusal_is_one_line(tmp_path: Path) -> None:
    image = tmp_path / "notes.png"
    image.write_text("hello")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "hrsam", "segment", "--image", str(image), "--points", "1,1,1"]
    result = subprocess.run([*args, "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {image} is not an image file PIL can read (PNG, JPEG, TIFF, BMP, "
                                          "WebP, ...)"]
    assert not (tmp_path / "out").exists()


def test_console_script_entry_exits_with_main_status(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["hrsam", "segment", "--points", "-1,0,1", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    assert exit_.value.code == 2 and "outside" in capsys.readouterr().err


def test_bundled_example_is_small() -> None:
    assert cli.EXAMPLE_IMAGE.is_file() and cli.EXAMPLE_IMAGE.stat().st_size < 300_000


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
