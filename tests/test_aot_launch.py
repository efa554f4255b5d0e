"""The AOT artefacts of both plugins, launched on a GPU outside Triton and outside TensorRT.

Each kernel is compiled exactly as the plugins' ``aot_impl`` does (``PluginDefinition.compile``:
``triton.compile`` for this GPU, PTX parameters rewritten into TensorRT's order, kernels within
48 KiB of shared memory), loaded through the CUDA driver's PTX JIT with cupy and launched with
TensorRT's argument convention (input pointers, int32 extra args, output pointers), the plugin's
grid, block and shared memory, on buffers shaped by the plugin's own rules. The outputs are
compared with the reference ops at full size: the 2048-input attention layouts of HRSAM (plain and
shifted windows with KV-only padding, 12 heads of 64) and the scan at D = 768, N = 32,
L = 3 x 16384, in float32, float16 and bfloat16.

Needs a CUDA GPU and cupy; run with ``pytest -m gpu tests/test_aot_launch.py``.
"""

from __future__ import annotations

import pytest
import torch

from hrsam.modeling.window_plan import window_plan
from hrsam.ops.selective_scan.reference import selective_scan_chunked
from hrsam.ops.varlen_attention.reference import varlen_attention_reference
from plugins import scan
from plugins.definitions import PLUGINS

cupy = pytest.importorskip("cupy", reason="needs cupy (pip install cupy-cuda12x) to launch the compiled PTX")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32"}
TORCH = {name: dtype for dtype, name in DTYPES.items()}
# Max error relative to the largest reference value (references in float64 on the same inputs).
ATTENTION_TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SCAN_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _capability() -> int:
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def launch_plugin(op_type: str, inputs: list[torch.Tensor], attrs: dict) -> list[torch.Tensor]:
    """Run one plugin node as TensorRT's AOT launch would: its compiled PTX, launched by cupy."""
    from plugins.cupy_launch import launch

    definition = PLUGINS[op_type]
    inputs = [t.contiguous() for t in inputs]
    shapes = tuple(tuple(t.shape) for t in inputs)
    dtypes = tuple(DTYPES[t.dtype] for t in inputs)
    kernel = definition.compile(shapes, dtypes, attrs, _capability())
    aliases = dict(definition.aliases)
    outputs = [
        inputs[aliases[i]] if i in aliases
        else torch.empty(shape, dtype=TORCH[definition.output_dtype(i, dtypes)], device="cuda")
        for i, shape in enumerate(definition.output_shapes(shapes, dtypes, attrs))
    ]  # fmt: skip
    torch.cuda.synchronize()
    launch(kernel, [t.data_ptr() for t in inputs], [t.data_ptr() for t in outputs], stream=0)
    cupy.cuda.Device().synchronize()
    return outputs


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("shift", [0, 8], ids=["plain", "shifted"])
@pytest.mark.parametrize("dtype", list(ATTENTION_TOLERANCE), ids=lambda d: DTYPES[d])
def test_attention_ptx_matches_reference_at_2048(shift, dtype):
    plan = window_plan(((128, 128),), 16, shift, kv_padding=True)
    torch.manual_seed(0)
    heads, head_dim = 12, 64
    q = torch.randn(plan.q_index.numel(), heads, head_dim, device="cuda", dtype=dtype)
    k = torch.randn(plan.kv_index.numel(), heads, head_dim, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    cu_q, cu_k = plan.cu_seqlens_q.cuda(), plan.cu_seqlens_k.cuda()
    scale = head_dim**-0.5
    attrs = {"scale": scale, "max_seqlen_q": plan.max_seqlen_q, "max_seqlen_k": plan.max_seqlen_k}
    (out,) = launch_plugin("VarlenAttention", [q, k, v, cu_q, cu_k], attrs)
    want = varlen_attention_reference(q.double(), k.double(), v.double(), cu_q, cu_k,
                                      plan.max_seqlen_q, plan.max_seqlen_k, scale)  # fmt: skip
    error = _relative_error(out, want)
    assert out.dtype == dtype and error < ATTENTION_TOLERANCE[dtype], error


@pytest.mark.parametrize("dtype", list(SCAN_TOLERANCE), ids=lambda d: DTYPES[d])
def test_scan_ptx_matches_reference_at_full_size(dtype):
    from tests.test_selective_scan import make_inputs

    u, delta, A, B, C, D, bias = make_inputs(1, 768, 32, 3 * 16384, dtype=dtype, device="cuda")
    attrs = {"delta_softplus": 1, "sm_count": torch.cuda.get_device_properties(0).multi_processor_count}
    A_t = A.t().contiguous()
    B_t, C_t = (x.transpose(1, 2).float().contiguous() for x in (B, C))  # what the lowered graph prepares
    states, dt_sums = launch_plugin(scan.CHUNK_STATE, [u, delta, A_t, B_t, D, bias], attrs)
    assert states.shape[1] > 1  # the chunked plan: three passes really run
    (carried,) = launch_plugin(scan.CHUNK_CARRY, [states, dt_sums, A_t], attrs)
    assert carried.data_ptr() == states.data_ptr()  # in place, as TensorRT's aliased plugin I/O
    (y,) = launch_plugin(scan.CHUNK_OUTPUT, [u, delta, A_t, B_t, C_t, D, bias, carried], attrs)
    want = selective_scan_chunked(*[t.double() for t in (u, delta, A, B, C, D, bias)], True)
    error = _relative_error(y, want)
    assert y.dtype == dtype and error < SCAN_TOLERANCE[dtype], error
