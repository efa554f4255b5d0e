"""The compiled CPU backend of hrsam::selective_scan (cpu_scan.c via cpu_backend.py).

Ground truth is the float64 step-by-step recurrence run on the very values the kernel sees (its
float32 or 16-bit inputs, upcast), so only the kernel's own error is measured. Tolerances, as
|y - y_ref| <= tol * max|y_ref| (+ tol relative):

- float32 output: 1e-5. The kernel keeps a float32 state and uses libmvec's vector expf/log1pf
  (a few ulp); the state forgets its past at rate dt * |A|, so rounding errors do not pile up
  with L. Measured 1e-7..3e-7 on the development CPU; 1e-5 leaves room for other libmvec builds.
- float16 / bfloat16 outputs: 2e-3 / 1.6e-2, the rounding of the output itself (2^-11 and 2^-8
  relative) with headroom, as in tests/test_selective_scan.py.

These tests need a C compiler (cc or gcc); without one they are skipped, except the fallback
tests, which need none.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from hrsam.ops import available_backends, use_backend
from hrsam.ops.selective_scan import cpu_backend, selective_scan
from hrsam.ops.selective_scan.reference import selective_scan_chunked, selective_scan_sequential
from tests.test_selective_scan import make_inputs

TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
needs_compiler = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """An empty cache directory and no loaded kernel; the real kernel is reloaded afterwards."""
    monkeypatch.setenv("HRSAM_CACHE_DIR", str(tmp_path))
    cpu_backend.forget_library()
    yield tmp_path
    cpu_backend.forget_library()


@contextlib.contextmanager
def recorded_logs() -> Iterator[list[logging.LogRecord]]:
    """Records of the "hrsam.ops" logger inside the block (works with pytest's logging plugin off)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("hrsam.ops")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run_cpu(*x: torch.Tensor, softplus: bool = True) -> torch.Tensor:
    with use_backend("selective_scan", "cpu"):
        assert available_backends("selective_scan", *x, softplus)[0] == "cpu"
        return selective_scan(*x, delta_softplus=softplus)


def assert_matches(y: torch.Tensor, x: tuple[torch.Tensor, ...], softplus: bool, dtype: torch.dtype) -> None:
    """y against the float64 recurrence on the same input values, at the dtype's tolerance."""
    expected = selective_scan_sequential(*[t.double() for t in x], softplus)
    tol = TOLERANCES[dtype]
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


@needs_compiler
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize(("batch", "dim", "dstate", "seqlen"), [
    (1, 5, 1, 1), (2, 33, 4, 3), (3, 16, 16, 17), (1, 5, 32, 1000), (2, 40, 32, 130),
])
def test_float32_matches_float64_recurrence(softplus, batch, dim, dstate, seqlen):
    x = make_inputs(batch, dim, dstate, seqlen, dtype=torch.float32, positive_dt=not softplus)
    assert_matches(run_cpu(*x, softplus=softplus), x, softplus, torch.float32)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_inputs_keep_their_dtype(dtype):
    x = make_inputs(2, 33, 8, 70, dtype=dtype)
    assert_matches(run_cpu(*x), x, True, dtype)


@needs_compiler
def test_non_contiguous_inputs():
    """Inputs laid out as Cycle-scan makes them ([batch, L, k] transposed) and a transposed A."""
    u, delta, A, B, C, D, bias = make_inputs(2, 21, 6, 45, dtype=torch.float32)
    x = (
        u.transpose(1, 2).contiguous().transpose(1, 2),
        delta.transpose(1, 2).contiguous().transpose(1, 2),
        A.t().contiguous().t(),
        B.transpose(1, 2).contiguous().transpose(1, 2),
        torch.cat([C, C], dim=-1)[..., ::2],
        D,
        torch.stack([bias, bias], dim=1)[:, 0],
    )
    assert not any(t.is_contiguous() for t in x[:5]) and not x[6].is_contiguous()
    assert_matches(run_cpu(*x), x, True, torch.float32)


@needs_compiler
@pytest.mark.parametrize("scale", [30.0, 1e4])
def test_large_delta_stays_finite(scale):
    """delta + bias far outside softplus's linear region on both sides (exp(|x|) would overflow)."""
    u, delta, A, B, C, D, bias = make_inputs(1, 24, 8, 64, dtype=torch.float32)
    x = (u, delta * scale, A, B, C, D, bias)
    y = run_cpu(*x)
    assert torch.isfinite(y).all()
    assert_matches(y, x, True, torch.float32)


@needs_compiler
def test_matches_chunked_reference_at_a_realistic_shape():
    """Cycle-scan-like: N = 32, one full and one partial channel block, L = 3 x 1024."""
    x = make_inputs(1, 40, 32, 3 * 1024, dtype=torch.float32)
    expected = selective_scan_chunked(*[t.double() for t in x], True)
    tol = TOLERANCES[torch.float32]
    torch.testing.assert_close(run_cpu(*x).double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


@needs_compiler
@pytest.mark.slow
def test_matches_chunked_reference_at_hrsam_tiny_size():
    """One hrsam_tiny Cycle-scan call at 1024: dim 192, N 32, L = 3 x 4096."""
    x = make_inputs(1, 192, 32, 3 * 4096, dtype=torch.float32)
    expected = selective_scan_chunked(*[t.double() for t in x], True)
    tol = TOLERANCES[torch.float32]
    torch.testing.assert_close(run_cpu(*x).double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


@needs_compiler
def test_operator_dispatches_to_cpu_for_cpu_tensors():
    x = make_inputs(1, 8, 4, 12, dtype=torch.float32)
    assert available_backends("selective_scan", *x, True) == ["cpu", "reference"]
    assert available_backends("selective_scan", *[t.double() for t in x], True) == ["reference"]
    assert torch.equal(selective_scan(*x), cpu_backend.forward(*x, True))


@needs_compiler
def test_results_do_not_depend_on_thread_count():
    x = make_inputs(2, 50, 8, 33, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_cpu(*x)
        torch.set_num_threads(2)
        two = run_cpu(*x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@needs_compiler
def test_concurrent_calls_from_several_threads():
    """ONNX Runtime calls the op from its own threads: concurrent calls must not interfere."""
    inputs = [make_inputs(1, 20, 4, 50, dtype=torch.float32, seed=seed) for seed in range(6)]
    alone = [run_cpu(*x) for x in inputs]
    with ThreadPoolExecutor(max_workers=3) as pool:
        together = list(pool.map(lambda x: cpu_backend.forward(*x, True), inputs))
    assert all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))


@needs_compiler
def test_caller_keeps_its_denormal_mode():
    """The kernel flushes denormals on its threads only; loading or calling it must not leak that."""
    run_cpu(*make_inputs(1, 20, 4, 10, dtype=torch.float32))
    tiny = torch.tensor([1e-38], dtype=torch.float32) / 100
    assert tiny.item() != 0.0


@needs_compiler
def test_compiled_library_is_reused_from_the_cache(fresh_kernel, monkeypatch):
    assert cpu_backend.unavailable_reason() is None
    built = sorted(fresh_kernel.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    mtime = built[0].stat().st_mtime_ns
    commands = []
    real_run = cpu_backend._run
    monkeypatch.setattr(cpu_backend, "_run", lambda argv, step: commands.append(argv) or real_run(argv, step))
    cpu_backend.forget_library()
    assert cpu_backend.unavailable_reason() is None
    assert all("-c" not in argv and "-shared" not in argv for argv in commands), commands
    assert sorted(fresh_kernel.iterdir()) == built and built[0].stat().st_mtime_ns == mtime


@pytest.mark.parametrize(("compiler", "message"), [
    ("/bin/false", "failed (exit status 1)"), ("/nonexistent/cc", "was not found"),
])
def test_broken_compiler_falls_back_to_the_reference(fresh_kernel, monkeypatch, compiler, message):
    monkeypatch.setenv("CC", compiler)
    x = make_inputs(1, 6, 3, 9, dtype=torch.float32)
    with recorded_logs() as records:
        reason = cpu_backend.unavailable_reason()
        y = selective_scan(*x)
    assert reason is not None and message in reason and "\n" not in reason
    assert available_backends("selective_scan", *x, True) == ["reference"]
    assert any(reason in record.getMessage() for record in records)
    assert_matches(y, x, True, torch.float32)
    assert list(fresh_kernel.iterdir()) == []


@needs_compiler
def test_compile_error_reports_the_compilers_first_error(fresh_kernel, monkeypatch, tmp_path_factory):
    broken = tmp_path_factory.mktemp("src") / "cpu_scan.c"
    broken.write_text("int hrsam_selective_scan_f32(void) { return }\n")
    monkeypatch.setattr(cpu_backend, "SOURCE", broken)
    reason = cpu_backend.unavailable_reason()
    assert reason is not None and "error" in reason and "\n" not in reason
    assert list(fresh_kernel.iterdir()) == []  # no temporary files left behind
