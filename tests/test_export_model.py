"""torch.export of the tiny encoders and of the prompt decoder (export contract, docs/EXPORT.md).

At a fixed input size the encoder must trace into one graph whose only irregular operations are
the ``hrsam::`` custom ops, with index plans / cu_seqlens / RoPE tables as constants; the decoder
must trace with a dynamic number of points.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.export import Dim

from hrsam.modeling.configs import get_config
from hrsam.modeling.encoder import HRSAMEncoder
from hrsam.modeling.interactive import build_model


def _graph_targets(program: torch.export.ExportedProgram) -> set[str]:
    return {str(node.target) for node in program.graph.nodes if node.op == "call_function"}


@pytest.mark.parametrize(
    ("name", "size", "anchor_size"),
    [
        ("hrsam_tiny", 512, None),
        ("hrsampp_tiny", 256, 128),  # HRSAM++ structure with a small anchor: fast on 2 CPU cores
        pytest.param("hrsampp_tiny", 512, None, marks=pytest.mark.slow),
        pytest.param("hrsam_tiny", 1024, None, marks=pytest.mark.slow),
        pytest.param("hrsampp_tiny", 1024, None, marks=pytest.mark.slow),
    ],
)
def test_export_encoder(name: str, size: int, anchor_size: int | None) -> None:
    torch.manual_seed(0)
    config = get_config(name).encoder
    if anchor_size is not None:
        config = dataclasses.replace(config, anchor_size=anchor_size)
    encoder = HRSAMEncoder(config).eval()
    encoder.prepare(size, size)
    images = torch.randn(1, 3, size, size)
    with torch.no_grad():
        program = torch.export.export(encoder, (images,))
        expected = encoder(images)
        actual = program.module()(images)
    targets = _graph_targets(program)
    assert "hrsam.varlen_attention.default" in targets
    assert "hrsam.selective_scan.default" in targets
    assert not any("arange" in t for t in targets), "index plans must be constants, not traced"
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_export_requires_prepared_layouts() -> None:
    encoder = build_model("hrsam_tiny").encoder.eval()
    with pytest.raises(RuntimeError, match="prepare"):
        torch.export.export(encoder, (torch.randn(1, 3, 256, 256),))


def test_export_decoder_with_dynamic_points() -> None:
    torch.manual_seed(0)
    decoder = build_model("hrsam_tiny").decoder.eval()
    embedding = torch.randn(1, 256, 64, 64)
    coords = torch.tensor([[[10.0, 20.0], [300.0, 400.0], [0.0, 0.0]]])
    labels = torch.tensor([[1.0, 0.0, -1.0]])
    mask = torch.randn(1, 1, 256, 256)
    has_mask = torch.ones(1)
    points = Dim("points", min=1, max=64)
    with torch.no_grad():
        program = torch.export.export(
            decoder,
            (embedding, coords, labels, mask, has_mask),
            dynamic_shapes=({}, {1: points}, {1: points}, {}, {}),
        )
        for count in (1, 3, 7):
            args = (embedding, torch.rand(1, count, 2) * 1000, torch.ones(1, count), mask, has_mask)
            for got, want in zip(program.module()(*args), decoder(*args), strict=True):
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
