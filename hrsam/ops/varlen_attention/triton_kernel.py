"""Triton forward kernel of ``hrsam::varlen_attention`` (the kernel the TensorRT plugin compiles).

Why this shape. Flash Swin calls attention over many small windows (at most 256 queries x 256 keys,
head dim 64): one program per (query block, window, head) loads its BLOCK_M queries once, walks
the window's keys BLOCK_N at a time with an online softmax (running max and sum in float32, the
accumulator rescaled when the max grows), and writes its rows once. Scores never leave
registers, so memory traffic is q, k, v read once per query block and out written once.

Layout contract: q [Tq, H, D], k / v [Tk, H, D], out [Tq, H, D], all contiguous (the launcher
copies otherwise); cu_seqlens_q / cu_seqlens_k int32 [N + 1] on the device, read by the kernel
(no host sync). Grid: (cdiv(max_seqlen_q, BLOCK_M), N * H); a program whose query block starts
past its window's query length returns at once, so empty query segments write nothing.
An empty key segment with queries gives zeros for those queries, as the reference does
(``scaled_dot_product_attention`` returns 0 for fully masked rows).

Precision: float32 accumulation and softmax statistics for every input dtype. 16-bit inputs use
16-bit tensor-core dots (P is rounded to the input dtype before P @ V). float32 inputs take
``precision``: ``"tf32x3"`` (default) splits each operand into TF32 high and low parts and sums
three tensor-core dots (hi*hi + hi*lo + lo*hi), about 2**-20 relative error per product, i.e.
float32-level results at tensor-core speed; ``"tf32"`` is one TF32 dot (2**-11, like
``torch.backends.cuda.matmul.allow_tf32``); ``"ieee"`` is exact float32 FMA, but Triton's FMA
dot keeps whole operand rows in registers and spills at head dim 64, so it is the slow option.

Ahead-of-time use (TensorRT ``aot_impl``, AOTInductor): ``describe_launch`` gives the kernel
object, its signature in argument order (tensor inputs, then the output; there are no runtime
scalars: heads, head dim, scale and block sizes are compile-time constants), the constexprs, the
alignment attributes the JIT would infer, num_warps / num_stages and the grid formula. Triton
(3.3 and later) appends two pointer parameters to the compiled kernel (global and profile
scratch); this kernel needs neither (both sizes 0), so a launcher outside Triton passes null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

Precision = Literal["ieee", "tf32", "tf32x3"]
PRECISIONS: tuple[str, ...] = ("ieee", "tf32", "tf32x3")
DEFAULT_FP32_PRECISION = "tf32x3"
DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
HEAD_DIMS = (16, 32, 64, 128)
# CUDA's limit on gridDim.y, which holds windows * heads.
MAX_GRID_Y = 65535


@dataclass(frozen=True)
class AttentionConfig:
    """Launch parameters: query rows per program, keys per inner step, warps, software pipeline depth."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Default launch parameters by (dot kind, head dim), chosen from offline sm_90 compiles with
# Triton 3.6 (registers and spills as reported by ptxas) before any GPU timing; the sweep of
# ``benchmarks/varlen_attention.py`` times them against the alternatives on the H200.
# 16-bit: 128-row query blocks on two warpgroups (106 registers, no spill at head dim 64), so one
# K/V tile in shared memory serves 128 queries. tf32 / tf32x3 triple or double the operand bytes:
# 64 x 32 tiles stay under 255 registers without spilling. ieee uses Triton's FMA dot, which keeps
# whole operand rows in registers: every tile spills at head dim 64, 16 x 32 the least (120 bytes).
_DEFAULT_CONFIGS: dict[tuple[str, int], AttentionConfig] = {
    ("16bit", 16): AttentionConfig(128, 64, 8, 3),
    ("16bit", 32): AttentionConfig(128, 64, 8, 3),
    ("16bit", 64): AttentionConfig(128, 64, 8, 3),
    ("16bit", 128): AttentionConfig(64, 64, 4, 3),
    ("tf32", 16): AttentionConfig(64, 64, 4, 2),
    ("tf32", 32): AttentionConfig(64, 64, 4, 2),
    ("tf32", 64): AttentionConfig(64, 64, 4, 2),
    ("tf32", 128): AttentionConfig(64, 32, 4, 2),
    ("tf32x3", 16): AttentionConfig(64, 32, 4, 2),
    ("tf32x3", 32): AttentionConfig(64, 32, 4, 2),
    ("tf32x3", 64): AttentionConfig(64, 32, 4, 2),
    ("tf32x3", 128): AttentionConfig(32, 32, 4, 2),
    ("ieee", 16): AttentionConfig(32, 32, 4, 2),
    ("ieee", 32): AttentionConfig(32, 32, 4, 2),
    ("ieee", 64): AttentionConfig(16, 32, 4, 2),
    ("ieee", 128): AttentionConfig(16, 16, 4, 2),
}


def default_config(dtype: torch.dtype, head_dim: int, precision: str = DEFAULT_FP32_PRECISION) -> AttentionConfig:
    """The configuration used when none is given (``precision`` matters for float32 only)."""
    kind = precision if dtype == torch.float32 else "16bit"
    return _DEFAULT_CONFIGS[(kind, head_dim)]


@triton.jit
def _attend_keys(
    acc,
    m_i,
    l_i,
    q,
    k_seg,
    v_seg,
    start,
    k_len,
    offs_n,
    offs_d,
    ROW_STRIDE: tl.constexpr,
    QK_SCALE: tl.constexpr,
    MASK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One online-softmax step over keys [start, start + BLOCK_N) of the window.

    Scores and the running max m_i are in the log2 domain (scaled by scale * log2 e), so the
    exponentials are single ex2 instructions. MASK_N (the last, partial key block only) gives
    keys past k_len a score of -inf; they load as zeros so stale memory never reaches a dot.
    """
    rows = start + offs_n
    offsets = rows[:, None] * ROW_STRIDE + offs_d[None, :]
    if MASK_N:
        valid = rows < k_len
        k = tl.load(k_seg + offsets, mask=valid[:, None], other=0.0)
        v = tl.load(v_seg + offsets, mask=valid[:, None], other=0.0)
    else:
        k = tl.load(k_seg + offsets)
        v = tl.load(v_seg + offsets)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * QK_SCALE
    if MASK_N:
        s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def varlen_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    cu_seqlens_q_ptr,
    cu_seqlens_k_ptr,
    out_ptr,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Program (query block, window * NUM_HEADS + head): BLOCK_M rows of one window and head."""
    block = tl.program_id(0)
    window = tl.program_id(1) // NUM_HEADS
    head = tl.program_id(1) % NUM_HEADS
    q_start = tl.load(cu_seqlens_q_ptr + window)
    q_len = tl.load(cu_seqlens_q_ptr + window + 1) - q_start
    if block * BLOCK_M >= q_len:
        return
    k_start = tl.load(cu_seqlens_k_ptr + window)
    k_len = tl.load(cu_seqlens_k_ptr + window + 1) - k_start
    ROW_STRIDE = NUM_HEADS * HEAD_DIM
    # 64-bit window bases (packed sequences may pass 2**31 elements); 32-bit offsets inside a window.
    head_offset = head * HEAD_DIM
    q_seg = q_ptr + q_start.to(tl.int64) * ROW_STRIDE + head_offset
    out_seg = out_ptr + q_start.to(tl.int64) * ROW_STRIDE + head_offset
    k_seg = k_ptr + k_start.to(tl.int64) * ROW_STRIDE + head_offset
    v_seg = v_ptr + k_start.to(tl.int64) * ROW_STRIDE + head_offset

    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < q_len
    q_offsets = offs_m[:, None] * ROW_STRIDE + offs_d[None, :]
    q = tl.load(q_seg + q_offsets, mask=mask_m[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    QK_SCALE = SCALE * 1.4426950408889634  # log2(e): softmax via exp2
    full_end = (k_len // BLOCK_N) * BLOCK_N
    for start in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = _attend_keys(
            acc, m_i, l_i, q, k_seg, v_seg, start, k_len, offs_n, offs_d,
            ROW_STRIDE, QK_SCALE, False, PRECISION,
        )
    if full_end < k_len:
        acc, m_i, l_i = _attend_keys(
            acc, m_i, l_i, q, k_seg, v_seg, full_end, k_len, offs_n, offs_d,
            ROW_STRIDE, QK_SCALE, True, PRECISION,
        )
    # l_i is 0 only for a window without keys, where acc is 0 too: write zeros, not 0 / 0.
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(out_seg + q_offsets, out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None])


# The kernel's runtime arguments in order. TensorRT's AOT plugins pass tensor inputs, then
# integer scalars, then outputs: this kernel has no scalars, so the ONNX node's inputs come first.
ARGUMENTS = ("q_ptr", "k_ptr", "v_ptr", "cu_seqlens_q_ptr", "cu_seqlens_k_ptr", "out_ptr")


@dataclass(frozen=True)
class AttentionLaunch:
    """How to launch ``varlen_attention_kernel`` for one (dtype, heads, head dim, scale).

    Everything here is a plain value, so a TensorRT ``aot_impl`` can compile the same kernel
    (``triton.compile(ASTSource(kernel, signature(), constexprs(), attrs()), options={"num_warps":
    ..., "num_stages": ...})``) and launch it with ``num_warps * 32`` threads, the compiled
    metadata's shared memory, on ``grid(num_segments, max_seqlen_q)``.
    """

    dtype: torch.dtype
    num_heads: int
    head_dim: int
    scale: float
    precision: str
    config: AttentionConfig

    @property
    def kernel(self) -> triton.runtime.jit.JITFunction:
        return varlen_attention_kernel

    @property
    def num_warps(self) -> int:
        return self.config.num_warps

    @property
    def num_stages(self) -> int:
        return self.config.num_stages

    def constexprs(self) -> dict[str, object]:
        """Compile-time constants by parameter name (scale is one: TensorRT passes only ints)."""
        return {
            "NUM_HEADS": self.num_heads,
            "HEAD_DIM": self.head_dim,
            "SCALE": self.scale,
            "BLOCK_M": self.config.block_m,
            "BLOCK_N": self.config.block_n,
            "PRECISION": self.precision,
        }

    def signature(self) -> dict[str, str]:
        """Triton signature of every parameter in order: pointer types, then ``"constexpr"``."""
        element = DTYPES[self.dtype]
        types = [f"*{element}"] * 3 + ["*i32"] * 2 + [f"*{element}"]
        signature = dict(zip(ARGUMENTS, types, strict=True))
        signature.update({name: "constexpr" for name in self.constexprs()})
        return signature

    def attrs(self) -> dict[tuple[int, ...], list[list[object]]]:
        """``ASTSource`` attributes: q, k, v and out are 16-byte aligned.

        The JIT infers this from the tensors' addresses; without it the compiler cannot vectorise
        or pipeline the tile loads (ptxas then reports 255 registers and spills). A plugin compiled
        with them must only be launched on 16-byte aligned buffers.
        """
        return {(ARGUMENTS.index(name),): [["tt.divisibility", 16]] for name in ("q_ptr", "k_ptr", "v_ptr", "out_ptr")}

    def grid(self, num_segments: int, max_seqlen_q: int) -> tuple[int, int, int]:
        """(query blocks of the longest window, windows * heads, 1)."""
        return (triton.cdiv(max_seqlen_q, self.config.block_m), num_segments * self.num_heads, 1)


def unsupported_reason(q: Tensor, v: Tensor) -> str | None:
    """None if the kernel takes these inputs' dtype and head dims, else why not (the device is the caller's check)."""
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} is not supported (fp32, fp16, bf16)"
    if q.shape[-1] not in HEAD_DIMS or v.shape[-1] != q.shape[-1]:
        return f"head dims q {q.shape[-1]} / v {v.shape[-1]} must be equal and in {HEAD_DIMS}"
    return None


def describe_launch(
    dtype: torch.dtype,
    num_heads: int,
    head_dim: int,
    scale: float,
    precision: Precision | None = None,
    config: AttentionConfig | None = None,
) -> AttentionLaunch:
    """Validate one problem class and say how the kernel is launched for it.

    precision: float32 dots, "tf32x3" (default), "tf32" or "ieee" (see the module docstring);
    ignored (recorded as "tf32", Triton's default) for 16-bit inputs.
    """
    if dtype not in DTYPES:
        raise ValueError(f"triton varlen attention takes float32, float16 or bfloat16, not {dtype}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"triton varlen attention takes head dim in {HEAD_DIMS}, not {head_dim}")
    if num_heads < 1:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if dtype == torch.float32:
        precision = precision or DEFAULT_FP32_PRECISION
    else:
        precision = "tf32"
    config = config or default_config(dtype, head_dim, precision)
    for name in ("block_m", "block_n"):
        size = getattr(config, name)
        if size < 16 or size & (size - 1):
            raise ValueError(f"config.{name} must be a power of two >= 16 (tl.dot), got {size}")
    return AttentionLaunch(dtype, num_heads, head_dim, float(scale), precision, config)


def varlen_attention_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
    precision: Precision | None = None,
    config: AttentionConfig | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Block-diagonal attention with the Triton kernel; inputs already validated by the op.

    Returns [Tq, H, D] in q's dtype, written into ``out`` when given (a TensorRT JIT ``impl``
    owns its output buffer). ``max_seqlen_k`` only bounds the 32-bit offsets: each program stops
    at its own window's key count, read from ``cu_seqlens_k`` on the device. Only tensors, ints
    and a ``wrap_triton`` launch: usable inside ``torch.library.triton_op``.
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    if v.shape[2] != head_dim:
        raise ValueError(f"triton varlen attention needs v's head dim ({v.shape[2]}) equal to q's ({head_dim})")
    launch = describe_launch(q.dtype, num_heads, head_dim, scale, precision, config)
    num_segments = cu_seqlens_q.shape[0] - 1
    if num_segments * num_heads > MAX_GRID_Y:
        raise ValueError(f"{num_segments} segments x {num_heads} heads exceed the grid's {MAX_GRID_Y} rows")
    if max(max_seqlen_q, max_seqlen_k) * num_heads * head_dim >= 2**31:
        raise ValueError("a segment of more than 2**31 elements does not fit the kernel's 32-bit offsets")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {q.dtype} tensor of shape {tuple(q.shape)}")
    if q.shape[0] == 0 or num_segments == 0 or max_seqlen_q <= 0:
        return out
    grid = launch.grid(num_segments, max_seqlen_q)
    wrap_triton(varlen_attention_kernel)[grid](
        q, k, v, cu_seqlens_q, cu_seqlens_k, out,
        **launch.constexprs(), num_warps=launch.num_warps, num_stages=launch.num_stages,
    )
    return out
