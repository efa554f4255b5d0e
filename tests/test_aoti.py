"""AOTInductor packages: ``python -m export aoti`` and ``trt_runtime.aoti_runner.AOTIRunner``.

CPU (slow: two AOTInductor compiles of ``hrsam_tiny`` at input 256, a few minutes on 2 cores,
shared by the tests through one module fixture): the sidecar records and package metadata, a
5-click session through ``open_predictor("aoti")`` against the eager model (fp32: 1e-4 of the
logits' magnitude), both packages run in a Python process that never imports hrsam (no Python
model code inside), and each refusal (precision, point count, foreign sidecar, another model's
directory, a package whose wrapper carries its own libstdc++ and would crash the process on load,
a file that is no package). Fast CPU tests cover the errors that need no package, and the ELF
symbol check on real libraries.

GPU (marker ``gpu``): first, a small module holding every ``triton_op`` an encoder package compiles
in (a two-segment Cycle-scan on the projections' views, a block with the attention kernels and
the add + norm kernel chained into a LayerNorm), packaged in seconds: one output, within bf16
rounding of eager. Then a package of ``GPU_CASE`` (env ``HRSAM_GPU_CASE``, default hrsampp_tiny at
1024) in bf16, against eager fp32 and bf16 over the session (tolerances of
``tests/test_compiled.py``), every call replayed from a CUDA graph and bitwise equal to calling the
packages directly, and run without hrsam on CUDA. With ``HRSAM_AOTI_DIR`` set the
package is built there, or reused when that directory already holds this case, so a benchmark run
afterwards (``benchmarks/compiled.py --aoti-dir``) need not compile it again.

The wrapper compiler (``export/aoti_compiler.py``): a compiler that links its own libstdc++ into
shared libraries (emulated with the system g++ and ``-static-libstdc++``) is passed over for the
next candidate, and with no usable candidate the export stops before packaging, naming each one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from export.aoti import _package, export_aoti
from export.aoti_compiler import candidates, embeds_libstdcxx_reason, first_usable, pick_compiler
from export.cli import UserError
from export.cli import main as export_main
from export.onnx_export import make_sidecar
from hrsam.checkpoint import load_model
from hrsam.compiled import CudaGraphCall
from hrsam.contract import AOTI_FILES, META_MAX_POINTS, META_PRECISION, SIDECAR_FILE, Sidecar
from hrsam.runner import EagerRunner, autocast_dtype_of
from tests.test_compiled import check_session, click_session, gpu_case
from trt_runtime import aoti_runner, backend_unavailable_reason, open_runner
from trt_runtime.aoti_check import LOCALE_ID_SYMBOL, defined_dynamic_symbols, embedded_libstdcxx_reason
from trt_runtime.aoti_runner import AOTIRunner

REPO = Path(__file__).resolve().parents[1]
CPU_SIZE = 256
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def cpu_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("aoti")
    export_aoti(load_model("hrsam_tiny"), CPU_SIZE, directory, precision="fp32", device="cpu", max_points=8)
    return directory


@pytest.mark.slow
def test_sidecar_and_package_metadata(cpu_export: Path) -> None:
    sidecar = Sidecar.read(cpu_export)
    assert set(sidecar.aoti) == {"encoder", "decoder"}
    assert sidecar.aoti["decoder"]["max_points"] == 8 and sidecar.aoti["encoder"]["precision"] == "fp32"
    runner = AOTIRunner(cpu_export, precision="fp32")
    metadata = runner._packages["decoder"][1]
    assert metadata[META_PRECISION] == "fp32" and metadata[META_MAX_POINTS] == "8"
    assert runner.info.input_size == CPU_SIZE and runner.info.backend == "aoti"


@pytest.mark.slow
def test_session_matches_eager(cpu_export: Path) -> None:
    runner = open_runner("aoti", export_dir=cpu_export, precision="fp32")
    reference = click_session(EagerRunner(load_model("hrsam_tiny").model), CPU_SIZE)
    check_session(click_session(runner, CPU_SIZE), reference, reference, "fp32")


_STANDALONE = textwrap.dedent(
    """
    import sys
    import torch
    packages, scratch, device = sys.argv[1:]
    inputs = torch.load(scratch + "/in.pt")
    encoder = torch._inductor.aoti_load_package(packages + "/encoder.pt2")
    decoder = torch._inductor.aoti_load_package(packages + "/decoder.pt2")
    embedding = encoder(inputs["images"].to(device))
    iou, masks = decoder(embedding, *(t.to(device) for t in inputs["prompts"]))
    torch.save({"embedding": embedding.cpu(), "masks": masks.cpu()}, scratch + "/out.pt")
    assert not any(name.startswith("hrsam") for name in sys.modules), "hrsam was imported"
    print("standalone ok")
    """
)


def run_without_hrsam(directory: Path, runner: AOTIRunner, scratch: Path) -> None:
    """Both packages in a fresh process that never imports hrsam give the runner's outputs."""
    size, side = runner.info.input_size, runner.embedding_size
    images = torch.randn(1, 3, size, size)
    prompts = (torch.tensor([[[size * 0.3, size * 0.6], [0.0, 0.0]]]), torch.tensor([[1.0, -1.0]]),
               torch.zeros(1, 1, 4 * side, 4 * side), torch.zeros(1))  # fmt: skip
    torch.save({"images": images, "prompts": prompts}, scratch / "in.pt")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [sys.executable, "-c", _STANDALONE, str(directory), str(scratch), runner.device.type]
    done = subprocess.run(command, cwd="/", env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "standalone ok" in done.stdout, done.stderr[-3000:]
    out = torch.load(scratch / "out.pt")
    embedding = runner.encode(images.to(runner.device))
    _, masks = runner.decode(embedding, *(t.to(runner.device) for t in prompts))
    torch.testing.assert_close(out["embedding"], embedding.cpu(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["masks"], masks.cpu(), atol=1e-5, rtol=1e-5)


class AutocastLinear(torch.nn.Module):
    """A float32 Linear run under bf16 autocast, as ``EncoderPart`` runs the model's projections."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.proj(x).float()


@pytest.mark.slow
def test_packages_hold_weights_cast_once(tmp_path: Path) -> None:
    """Autocast's weight casts are folded into constants when the package loads, not done per call.

    Without runtime constant folding (and without freezing, which Inductor cannot apply to the
    encoder's exported graph) every call re-cast the float32 weights. Inductor names the constants it
    folds at load ``_FOLDED_CONST_*``.
    """
    part, x = AutocastLinear().eval(), torch.randn(4, 32)
    path = tmp_path / "linear.pt2"
    _package(part, (x,), None, path, {}, False, pick_compiler().compiler, None)
    package = torch._inductor.aoti_load_package(str(path))
    assert any(name.startswith("_FOLDED_CONST_") for name in package.get_constant_fqns())
    with torch.no_grad():
        torch.testing.assert_close(package(x), part(x))


@pytest.mark.slow
def test_packages_run_without_hrsam(cpu_export: Path, tmp_path: Path) -> None:
    run_without_hrsam(cpu_export, AOTIRunner(cpu_export, precision="fp32"), tmp_path)


@pytest.mark.slow
def test_refusals(cpu_export: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compiled for fp32, not bf16"):
        AOTIRunner(cpu_export, precision="bf16")
    runner = AOTIRunner(cpu_export, precision="fp32")
    embedding = torch.zeros(1, 256, 16, 16)
    too_many = (torch.zeros(1, 9, 2), torch.zeros(1, 9), torch.zeros(1, 1, 64, 64), torch.zeros(1))
    with pytest.raises(ValueError, match="1 to 8 points"):
        runner.decode(embedding, *too_many)
    foreign = tmp_path / "foreign"
    shutil.copytree(cpu_export, foreign)
    data = json.loads((foreign / SIDECAR_FILE).read_text())
    data["weights_sha256"] = "0" * 64
    (foreign / SIDECAR_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not belong"):
        AOTIRunner(foreign, precision="fp32")
    for part in ("encoder.pt2", "decoder.pt2"):  # built here against the shared libstdc++
        assert embedded_libstdcxx_reason(cpu_export / part) is None
    crashing = tmp_path / "crashing"
    shutil.copytree(cpu_export, crashing)
    _replace_libraries(crashing / "encoder.pt2", _loaded_libstdcxx().read_bytes())
    with pytest.raises(RuntimeError, match="own copy of libstdc"):
        AOTIRunner(crashing, precision="fp32")
    (crashing / "encoder.pt2").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="not a readable AOTInductor package"):
        AOTIRunner(crashing, precision="fp32")


def _loaded_libstdcxx() -> Path:
    """The libstdc++ this process runs on (torch loaded it): it defines the locale symbols itself."""
    paths = [line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libstdc++" in line]
    if not paths:
        pytest.skip("no libstdc++ mapped in this process (not Linux with glibc)")
    return Path(paths[0])


def _replace_libraries(package: Path, library: bytes) -> None:
    """Rewrite ``package`` with every ``.so`` in it replaced by ``library``."""
    with zipfile.ZipFile(package) as archive:
        entries = [
            (info, library if info.filename.endswith(".so") else archive.read(info)) for info in archive.infolist()
        ]
    with zipfile.ZipFile(package, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)


def test_libstdcxx_check_reads_elf_symbols(tmp_path: Path) -> None:
    """A library that carries libstdc++'s locale code is named; one that does not passes; junk is an error."""
    package = tmp_path / "p.pt2"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("p/data/aotinductor/model/x.wrapper.so", _loaded_libstdcxx().read_bytes())
    assert "x.wrapper.so in p.pt2 was linked with its own copy of libstdc++" in embedded_libstdcxx_reason(package)
    with open(torch._C.__file__, "rb") as extension:
        symbols = defined_dynamic_symbols(extension)
    assert symbols and LOCALE_ID_SYMBOL not in symbols  # an extension linked against the shared libstdc++
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("p/x.so", b"\x7fELF but nothing else")
    with pytest.raises(ValueError, match="x.so is not a valid shared library"):
        embedded_libstdcxx_reason(package)


def static_libstdcxx_compiler(directory: Path) -> str:
    """A compiler like the GPU machine's /opt/gcc g++: the system g++ that links libstdc++ statically."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("needs g++ (CI installs it)")
    script = directory / "static-g++"
    script.write_text(f'#!/bin/sh\nexec {gxx} -static-libstdc++ "$@"\n')
    script.chmod(0o755)
    return str(script)


def test_compiler_probe_tells_shared_from_embedded_libstdcxx(tmp_path: Path) -> None:
    static = static_libstdcxx_compiler(tmp_path)
    assert embeds_libstdcxx_reason(shutil.which("g++")) is None
    assert "defines std::locale::id::_M_id" in embeds_libstdcxx_reason(static)
    assert "cannot run it" in embeds_libstdcxx_reason(str(tmp_path / "missing-g++"))
    broken = tmp_path / "broken-g++"
    broken.write_text("#!/bin/sh\necho 'fatal: no such target' >&2\nexit 3\n")
    broken.chmod(0o755)
    assert "cannot build a shared library (fatal: no such target)" in embeds_libstdcxx_reason(str(broken))


def test_export_passes_over_a_compiler_that_embeds_libstdcxx(tmp_path: Path) -> None:
    static = static_libstdcxx_compiler(tmp_path)
    gxx = shutil.which("g++")
    assert candidates([static, str(tmp_path / "missing"), gxx, gxx])[:2] == [static, gxx]
    choice = first_usable((static, gxx))
    assert choice.compiler == gxx and choice.passed_over[0][0] == static
    with pytest.raises(UserError, match=r"tried .*static-g\+\+: links its own copy of libstdc\+\+"):
        first_usable((static,))


class _ReplayOnCpu(CudaGraphCall):
    """``CudaGraphCall``'s call path (inputs copied into the capture's tensors, outputs cloned) on a
    CPU: a replay calls ``fn`` again on those tensors."""

    def __init__(self, fn, inputs, pool) -> None:  # noqa: ANN001 - CudaGraphCall's signature
        self.inputs = tuple(inputs)
        self.graph = SimpleNamespace(replay=lambda: setattr(self, "outputs", fn(*self.inputs)))


def test_graph_replays_keep_their_own_input_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay copies its inputs into the graph's buffers: those must never be the caller's tensors
    (an image's cached embedding would become the next image's), and the decoder's embedding buffer
    serves every point count."""
    monkeypatch.setattr(aoti_runner, "CudaGraphCall", _ReplayOnCpu)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    replays = aoti_runner._GraphReplays()

    def package(embedding: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return embedding.sum() + coords.sum()

    first, second = torch.ones(4), torch.full((4,), 2.0)
    got = [replays.call(("decoder", n), package, (e, torch.zeros(n))) for e, n in ((first, 2), (second, 2), (first, 3))]
    assert [float(out) for (out,) in got] == [4.0, 8.0, 4.0]
    assert first.eq(1).all() and second.eq(2).all()  # the caller's tensors are untouched
    two, three = replays._graphs[("decoder", 2)], replays._graphs[("decoder", 3)]
    assert two.inputs[0] is three.inputs[0] and two.inputs[1] is not three.inputs[1]
    assert replays.failure is None


def test_runner_needs_packages(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model.json"):
        AOTIRunner(tmp_path)
    make_sidecar(load_model("hrsam_tiny"), CPU_SIZE, portable=False).write(tmp_path)
    with pytest.raises(FileNotFoundError, match="no AOTInductor package for encoder, decoder"):
        AOTIRunner(tmp_path)


def test_backend_is_available_without_cuda() -> None:
    """CPU packages load anywhere; a CUDA package's need for a GPU is checked when it is opened."""
    assert backend_unavailable_reason("aoti") is None


def test_export_refuses_another_models_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_sidecar(load_model("hrsampp_tiny"), CPU_SIZE, portable=False).write(tmp_path)
    args = ["aoti", "--model", "hrsam_tiny", "--size", str(CPU_SIZE), "--device", "cpu", "--out", str(tmp_path)]
    assert export_main(args) == 2
    assert "holds an export of hrsampp_tiny" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "100"], "multiple of 16"),
        (["--max-points", "1"], "at least 2"),
        (["--device", "tpu"], "cuda or cpu"),
    ],
)
def test_export_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture, args: list, message: str) -> None:
    base = ["aoti", "--model", "hrsam_tiny", "--size", "256", "--device", "cpu", "--out", str(tmp_path)]
    assert export_main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cuda_export_without_cuda_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert export_main(["aoti", "--model", "hrsam_tiny", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def gpu_package(name: str, size: int, precision: str, tmp_path: Path) -> Path:
    """The GPU case's package directory: HRSAM_AOTI_DIR (reused when it holds this case) or a fresh one."""
    directory = Path(os.environ.get("HRSAM_AOTI_DIR") or tmp_path / "aoti")
    loaded = load_model(name)
    if (directory / SIDECAR_FILE).is_file():
        sidecar = Sidecar.read(directory)
        record = sidecar.aoti.get("encoder", {})
        if (sidecar.model, sidecar.input_size, record.get("precision"), record.get("device")) == (
            name,
            size,
            precision,
            "cuda",
        ):
            return directory
    result = export_aoti(loaded, size, directory, precision=precision, device="cuda", max_points=16)
    print(f"packaged in {result.seconds} s; max |package - eager {precision}| {result.errors}")
    return directory


@pytest.mark.gpu
@cuda
def test_gpu_package_matches_eager_over_a_session(tmp_path: Path) -> None:
    name, size = gpu_case()
    directory = gpu_package(name, size, "bf16", tmp_path)
    runner = AOTIRunner(directory, precision="bf16")
    model = load_model(name).model.cuda().eval()
    reference = click_session(EagerRunner(model), size)
    same = click_session(EagerRunner(model, autocast_dtype_of("bf16")), size)
    replayed = click_session(runner, size)
    check_session(replayed, reference, same, "bf16")
    assert runner.graph_failure is None  # every call above came from a CUDA graph
    direct = click_session(AOTIRunner(directory, precision="bf16", cuda_graphs=False), size)
    for (_, _, from_graph), (_, _, called) in zip(replayed, direct, strict=True):
        assert np.array_equal(from_graph, called)  # the same kernels on the same inputs
    run_without_hrsam(directory, runner, tmp_path)
    # The Cycle-scan went in as its L-step kernels (hrsam::cycle_scan_triton), not the tiled scan.
    assert package_mentions(directory / AOTI_FILES["encoder"], b"_cycle_output_kernel")


class _ScanAndBlock(torch.nn.Module):
    """A Cycle-scan over two segments and a block chained into a LayerNorm, under bf16 autocast:
    every ``triton_op`` an encoder package compiles in, with the strided inputs the model hands
    them (the projections' token-major views), at a size that packages in seconds."""

    def __init__(self, dim: int, grid: int) -> None:
        from hrsam.modeling.cycle_scan import CycleScan
        from hrsam.modeling.encoder import Block
        from hrsam.modeling.flash_swin import AttentionLayout
        from hrsam.modeling.window_plan import window_plan

        super().__init__()
        heads = dim // 64  # head dim 64, the models'
        self.scan, self.block = CycleScan(dim, state_dim=16), Block(dim, heads, 2.0)
        self.norm = torch.nn.LayerNorm(dim)
        self.layout = AttentionLayout.build(window_plan(((grid, grid),), 8, 4, True), 64, "cuda")
        self.segments = [grid * grid - 64, 64]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):  # bf16 residual rows, as the encoder's
            x = self.scan(x[None].bfloat16(), self.segments)[0]
            x, normed = self.block.chained(x, self.layout, None, self.norm)
            return (x + normed).float()


@pytest.mark.gpu
@cuda
def test_gpu_package_of_the_custom_ops_matches_eager(tmp_path: Path) -> None:
    """The ops' packaged kernels (Cycle-scan, attention inputs, attention, add + norm) against eager.

    Quick (one small compile) where the session test above packages a whole model: run it first.
    The package's outputs are exactly the module's (Inductor once took a Cycle-scan's delta bias for
    written and returned it as a second output) and within bf16 rounding of eager bf16.
    """
    from hrsam.ops.lowering import engine_kernels

    torch.manual_seed(0)
    module = _ScanAndBlock(128, 16).cuda().eval()
    x = torch.randn(256, 128, device="cuda")
    path = tmp_path / "ops.pt2"
    _package(module, (x,), None, path, {}, False, pick_compiler().compiler, None)
    package = torch._inductor.aoti_load_package(str(path))
    outputs = package.loader.boxed_run([x])
    with torch.no_grad():
        with engine_kernels():
            same = module(x)
        want = module(x)
    assert len(outputs) == 1
    assert package_mentions(path, b"_cycle_output_kernel") and package_mentions(path, b"add_layer_norm_kernel")
    scale = want.abs().max()
    assert float((outputs[0] - same).abs().max() / scale) < 2e-2  # the same kernels, Inductor's fusions around them
    assert float((outputs[0] - want).abs().max() / scale) < 5e-2  # eager bf16, torch's kernels


def package_mentions(package: Path, text: bytes) -> bool:
    """Whether any member of a ``.pt2`` archive (wrapper source, libraries, kernel binaries) holds ``text``."""
    with zipfile.ZipFile(package) as archive:
        return any(text in archive.read(member) for member in archive.namelist())
