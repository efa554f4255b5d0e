"""The ``VarlenAttention`` plugin's rules: output shape, accepted types, and its one kernel launch.

The node (``hrsam.contract.VARLEN_ATTENTION``): q [Tq, H, Dh], k / v [Tk, H, Dh], cu_seqlens_q /
cu_seqlens_k int32 [N + 1]; attributes scale, max_seqlen_q, max_seqlen_k; out [Tq, H, Dh] in q's
dtype. The kernel is the package's Triton varlen attention
(``hrsam/ops/varlen_attention/triton_kernel.py``); its ``describe_launch`` gives signature,
constants, warps and grid, and heads, head dim and scale are compile-time constants, so the
plugin passes no scalar arguments. Plain Python over concrete shapes, tested without TensorRT.
"""

from __future__ import annotations

import dataclasses

import torch

from hrsam.ops.varlen_attention.triton_kernel import (
    ARGUMENTS,
    MAX_GRID_Y,
    AttentionConfig,
    default_config,
    describe_launch,
)
from plugins.aot import LaunchSpec

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def output_shape(
    q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...], cu_q: tuple[int, ...], cu_k: tuple[int, ...]
) -> tuple[int, ...]:
    """Shape of ``out`` (q's), after checking the inputs agree; ValueError names the mismatch."""
    if len(q) != 3 or len(k) != 3 or len(v) != 3:
        raise ValueError(f"VarlenAttention needs q, k, v of rank 3 [T, H, Dh], got {q}, {k}, {v}")
    if k[:2] != v[:2] or q[1:] != k[1:] or v[2] != q[2]:
        raise ValueError(f"VarlenAttention: q {q}, k {k}, v {v} disagree in heads, head dim or key count")
    if len(cu_q) != 1 or cu_q != cu_k:
        raise ValueError(f"VarlenAttention: cu_seqlens_q {cu_q} and cu_seqlens_k {cu_k} must be equal 1-D [N + 1]")
    return tuple(q)


def candidate_configs(dtype: str, head_dim: int) -> list[AttentionConfig]:
    """The kernel's default configuration first, then ones that need less shared memory.

    Fewer pipeline stages first (same tiles), then half-height query blocks, then half-width key
    steps: ``plugins.aot.compile_fitting`` takes the first that fits the plugin's shared memory.
    """
    base = default_config(TORCH_DTYPES[dtype], head_dim)
    smaller_m = dataclasses.replace(base, block_m=max(16, base.block_m // 2))
    smaller_n = dataclasses.replace(smaller_m, block_n=max(16, base.block_n // 2))
    configs = []
    for tiles in (base, smaller_m, smaller_n):
        for stages in range(base.num_stages, 0, -1):
            config = dataclasses.replace(tiles, num_stages=stages)
            if config not in configs:
                configs.append(config)
    return configs


def launches(
    dtype: str, q: tuple[int, ...], cu_q: tuple[int, ...], scale: float, max_seqlen_q: int
) -> tuple[LaunchSpec, ...]:
    """``launch`` for every candidate configuration, in preference order."""
    return tuple(
        launch(dtype, q, cu_q, scale, max_seqlen_q, config) for config in candidate_configs(dtype, q[2])
    )


def launch(
    dtype: str,
    q: tuple[int, ...],
    cu_q: tuple[int, ...],
    scale: float,
    max_seqlen_q: int,
    config: AttentionConfig | None = None,
) -> LaunchSpec:
    """The kernel launch for q [Tq, H, Dh] of ``dtype`` and ``cu_q[0] - 1`` segments."""
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"VarlenAttention plugin takes q/k/v in {sorted(TORCH_DTYPES)}, not {dtype}")
    num_heads, head_dim = q[1], q[2]
    num_segments = cu_q[0] - 1
    if num_segments < 1 or max_seqlen_q < 1:
        raise ValueError(f"VarlenAttention needs a segment and max_seqlen_q >= 1, got {cu_q}, {max_seqlen_q}")
    if num_segments * num_heads > MAX_GRID_Y:
        raise ValueError(f"VarlenAttention: {num_segments} segments x {num_heads} heads exceed the grid's {MAX_GRID_Y}")
    description = describe_launch(TORCH_DTYPES[dtype], num_heads, head_dim, scale, config=config)
    signature = description.signature()
    inputs, outputs = ARGUMENTS[:-1], ARGUMENTS[-1:]
    return LaunchSpec(
        kernel=description.kernel,
        inputs=inputs,
        scalars=(),
        outputs=outputs,
        dtypes=tuple((name, signature[name].lstrip("*")) for name in ARGUMENTS),
        constexprs=tuple(description.constexprs().items()),
        grid=description.grid(num_segments, max_seqlen_q),
        num_warps=description.num_warps,
        num_stages=description.num_stages,
    )
