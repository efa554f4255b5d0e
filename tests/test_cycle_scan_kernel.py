"""The Cycle-scan's L-step kernel (``hrsam.ops.selective_scan.cycle``) against its definition.

The definition is the tiled scan: R copies of the sequence, one scan over R L steps, the copies'
outputs weighted per channel and summed (``cycle_scan_tiled``, float64 here).

CPU: the C kernel (``cpu_scan.c``, two passes over L) in float32 within 1e-6 of the float64
definition (one and several tiles, uneven dim / N / L, R = 1, 2, 3, softplus on and off), and the
``CycleScan`` module's eager CPU output through it equal to its tiled path (5e-6). When the model
takes the kernel (``cycle_kernel_unsupported``), the errors ``cycle_scan`` raises, and that the
export check reads the right flag inside real compile / export traces.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from hrsam.modeling.cycle_scan import CycleScan
from hrsam.ops import use_backend
from hrsam.ops.lowering import aot_lowering
from hrsam.ops.selective_scan import cpu_backend, cycle
from hrsam.ops.selective_scan.cycle import cycle_kernel_unsupported, cycle_scan, cycle_scan_tiled
from tests.test_compiled import traced_values
from tests.test_selective_scan import make_inputs


def test_when_the_model_takes_the_kernel() -> None:
    u, *rest = make_inputs(1, 8, 4, 20, torch.float32)
    weights = torch.ones(8, 3)
    cpu_reason = cpu_backend.unavailable_reason()  # None where the C kernel builds (CI has gcc)
    assert cycle_kernel_unsupported(u, *rest, weights) == cpu_reason
    assert "float64" in cycle_kernel_unsupported(u.double(), *rest, weights)
    with aot_lowering():
        assert "AOTInductor" in cycle_kernel_unsupported(u, *rest, weights)
    with mock.patch.object(torch.compiler, "_is_exporting_flag", True):
        assert "export" in cycle_kernel_unsupported(u, *rest, weights)
    with mock.patch.object(torch.compiler, "is_compiling", return_value=True):
        assert "torch.compile trace keeps the tiled op" in cycle_kernel_unsupported(u, *rest, weights)
    with mock.patch.object(cycle, "_DISABLED", True):
        assert "HRSAM_CYCLE_SCAN_KERNEL=0" in cycle_kernel_unsupported(u, *rest, weights)
    with use_backend("selective_scan", "reference"):
        assert "forced to 'reference'" in cycle_kernel_unsupported(u, *rest, weights)
    with use_backend("selective_scan", "cpu"):
        assert cycle_kernel_unsupported(u, *rest, weights) == cpu_reason
    weights.requires_grad_(True)
    assert "gradients" in cycle_kernel_unsupported(u, *rest, weights)
    with torch.no_grad():
        assert cycle_kernel_unsupported(u, *rest, weights) == cpu_reason
    meta = [t.to("meta") for t in (u, *rest, weights.detach())]
    assert "no L-step kernel for meta tensors" in cycle_kernel_unsupported(*meta)


def test_cycle_scan_names_bad_inputs() -> None:
    inputs = make_inputs(1, 8, 4, 20, torch.float32)
    with pytest.raises(ValueError, match=r"weights must be \[dim=8, R >= 1\]"):
        cycle_scan(*inputs, torch.ones(8))
    with pytest.raises(ValueError, match="weights must be torch.float32"):
        cycle_scan(*inputs, torch.ones(8, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="u must be"):
        cycle_scan(inputs[0][0], *inputs[1:], torch.ones(8, 3))
    with pytest.raises(ValueError, match="the L-step kernel cannot run: float64"):
        cycle_scan(*make_inputs(1, 8, 4, 20), torch.ones(8, 3, dtype=torch.float64))


@pytest.mark.skipif(cpu_backend.unavailable_reason() is not None, reason="the C kernel does not build here")
def test_cpu_kernel_against_the_definition() -> None:
    """The C kernel's two passes over L (float32) against the float64 tiled definition, and the
    module's eager CPU output with the kernel against its tiled path."""
    for case in [(1, 40, 7, 150), (2, 64, 32, 333), (1, 33, 32, 1000)]:
        for repeats, softplus in [(1, True), (2, False), (3, True)]:
            inputs = make_inputs(*case, torch.float32, positive_dt=not softplus, seed=repeats)
            weights = torch.randn(case[1], repeats, generator=torch.Generator().manual_seed(repeats))
            want = cycle_scan_tiled(*[t.double() for t in inputs], weights.double(), softplus)
            got = cycle_scan(*inputs, weights, softplus)
            error = ((got.double() - want).abs().max() / want.abs().max()).item()
            assert error < 1e-6, (case, repeats, softplus, error)
    torch.manual_seed(0)
    module = CycleScan(48, state_dim=8).eval()
    torch.nn.init.normal_(module.gamma, mean=1.0, std=0.5)
    x = torch.randn(2, 150, 48)
    with torch.no_grad(), mock.patch.object(cycle, "cycle_scan", wraps=cycle.cycle_scan) as kernel:
        got = module(x)
        assert kernel.called
        with mock.patch.object(cycle, "_DISABLED", True):
            want = module(x)
    assert ((got - want).abs().max() / want.abs().max()).item() < 5e-6


def test_export_detection_inside_real_traces() -> None:
    """False while torch.compile traces (Dynamo up to torch 2.11 folds ``is_exporting()`` to True
    there), True while torch.export traces, strict or not."""
    want = {"compile": False, "export strict=True": True, "export strict=False": True}
    assert traced_values(cycle._exporting) == want
    assert not cycle._exporting()
