"""The selective scan as three TensorRT plugins, one per pass of the package's Triton kernels.

``hrsam/ops/selective_scan/triton_kernel.py`` runs the scan in three passes (chunk states, carry
across chunks, output) with float32 scratch buffers in between. A TensorRT AOT plugin launches
exactly one kernel and has no workspace of its own, so the ``SelectiveScan`` node of the export
contract is lowered (``plugins/lowering.py``) into three plugin nodes whose intermediate tensors
TensorRT allocates:

* ``SelectiveScanChunkState`` (u, delta, A_t, B_t, D, delta_bias) -> (states, dt_sums): pass 1;
* ``SelectiveScanChunkCarry`` (states, dt_sums, A_t) -> carried, aliased to ``states``: pass 2
  works in place, so its output is its first input's memory (TensorRT's aliased plugin I/O);
* ``SelectiveScanChunkOutput`` (u, delta, A_t, B_t, C_t, D, delta_bias, carried) -> y: pass 3.

``A_t`` is A transposed to [N, dim], ``B_t`` / ``C_t`` are B / C as float32 [batch, L, N]: the same
layouts the Triton launcher prepares (standard ONNX ops in the lowered graph). u, delta and y are
float32, float16 or bfloat16; everything else is float32.

Every function here is plain Python over concrete shapes: the chunk plan is the package's own
``plan_chunks`` for the build GPU's SM count (an attribute of the lowered nodes), so TensorRT runs
the kernels exactly as ``selective_scan_triton`` would on that GPU. States are allocated with at
least one row, so a plan with a single chunk still gives every pass a valid (if idle) buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton

from hrsam.ops.selective_scan import triton_kernel as kernels
from hrsam.ops.selective_scan.triton_kernel import DEFAULT_CONFIG, DEFAULT_CONFIG_16BIT, ScanConfig, plan_chunks
from plugins.aot import LaunchSpec

CHUNK_STATE = "SelectiveScanChunkState"
CHUNK_CARRY = "SelectiveScanChunkCarry"
CHUNK_OUTPUT = "SelectiveScanChunkOutput"
LOWERED_OPS = (CHUNK_STATE, CHUNK_CARRY, CHUNK_OUTPUT)

STATE_INPUTS = ("u", "delta", "A_t", "B_t", "D", "delta_bias")
STATE_OUTPUTS = ("states", "dt_sums")
CARRY_INPUTS = ("states", "dt_sums", "A_t")
CARRY_OUTPUTS = ("carried",)
OUTPUT_INPUTS = ("u", "delta", "A_t", "B_t", "C_t", "D", "delta_bias", "carried")
OUTPUT_OUTPUTS = ("y",)

ELEMENT_SIZES = {"fp32": 4, "fp16": 2, "bf16": 2}
# Threads the carry pass uses (the Triton launcher's choice).
_CARRY_WARPS = 4


@dataclass(frozen=True)
class ScanProblem:
    """One lowered scan: shapes, the dtype of u / delta / y, the softplus flag and the GPU's SM count."""

    batch: int
    dim: int
    seqlen: int
    dstate: int
    dtype: str
    softplus: bool
    sm_count: int

    def __post_init__(self) -> None:
        if self.dtype not in ELEMENT_SIZES:
            raise ValueError(f"selective scan plugins take u/delta in {sorted(ELEMENT_SIZES)}, not {self.dtype}")
        sizes = {"batch": self.batch, "dim": self.dim, "L": self.seqlen, "N": self.dstate, "sm_count": self.sm_count}
        bad = {name: value for name, value in sizes.items() if value < 1}
        if bad:
            raise ValueError(f"selective scan plugins need positive sizes, got {bad}")

    @property
    def config(self) -> ScanConfig:
        return DEFAULT_CONFIG if self.dtype == "fp32" else DEFAULT_CONFIG_16BIT

    @property
    def chunks(self) -> tuple[int, int]:
        """(chunk_len, n_chunks) of the package's plan for this GPU."""
        return plan_chunks(self.batch, self.dim, self.seqlen, self.config, self.sm_count)

    @property
    def n_prefix(self) -> int:
        """Chunks whose final state a later chunk needs."""
        return self.chunks[1] - 1

    @property
    def state_rows(self) -> int:
        return max(self.n_prefix, 1)

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of the float32 ``states`` [batch, rows, N, dim] and ``dt_sums`` [batch, rows, dim]."""
        return (self.batch, self.state_rows, self.dstate, self.dim), (self.batch, self.state_rows, self.dim)

    def flags(self) -> tuple[tuple[str, object], ...]:
        config = self.config
        block_n = triton.next_power_of_2(self.dstate)
        return (
            ("BLOCK_D", config.block_d),
            ("BLOCK_N", block_n),
            ("STEPS", config.steps or 16 // ELEMENT_SIZES[self.dtype]),
            ("EVEN_D", self.dim % config.block_d == 0),
            ("EVEN_N", self.dstate == block_n),
            ("SOFTPLUS", bool(self.softplus)),
        )

    def scalars(self) -> tuple[tuple[str, int], ...]:
        """Sizes and strides of the layouts above, in the kernels' parameter order."""
        chunk_len, _ = self.chunks
        n, d, length = self.dstate, self.dim, self.seqlen
        return (
            ("dim", d), ("seqlen", length), ("dstate", n), ("chunk_len", chunk_len), ("n_prefix", self.n_prefix),
            ("stride_an", d), ("stride_bb", length * n), ("stride_bt", n), ("stride_bn", 1),
            ("stride_srow", n * d), ("stride_sn", d),
        )

    def pointer_types(self, names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        activations = {"u_ptr", "delta_ptr", "out_ptr"}
        return tuple((name, self.dtype if name in activations else "fp32") for name in names)


def state_launch(problem: ScanProblem) -> LaunchSpec:
    """Pass 1 over every chunk but the last (one chunk when there is only one)."""
    inputs = ("u_ptr", "delta_ptr", "A_ptr", "B_ptr", "D_ptr", "bias_ptr")
    outputs = ("states_ptr", "dtsum_ptr")
    config = problem.config
    return LaunchSpec(
        kernel=kernels._chunk_state_kernel,
        inputs=inputs,
        scalars=problem.scalars(),
        outputs=outputs,
        dtypes=problem.pointer_types(inputs + outputs),
        constexprs=problem.flags(),
        grid=(problem.state_rows, triton.cdiv(problem.dim, config.block_d), problem.batch),
        num_warps=config.num_warps,
        maxnreg=config.maxnreg,
    )


def carry_launch(states: tuple[int, ...]) -> LaunchSpec:
    """Pass 2 over ``states`` [batch, rows, N, dim], in place: the plugin's input 0 and output share memory.

    Every row is a chunk whose state a later chunk needs; a single row (a one-chunk plan) is a
    scan over one element, which leaves it unchanged.
    """
    if len(states) != 4:
        raise ValueError(f"SelectiveScanChunkCarry needs states [batch, rows, N, dim], got {states}")
    batch, rows, dstate, dim = states
    nc = triton.next_power_of_2(rows)
    block_nd = max(1, kernels._CARRY_TILE // nc)
    scalars = (("dim", dim), ("dstate", dstate), ("n_prefix", rows))
    return LaunchSpec(
        kernel=kernels._chunk_carry_kernel,
        inputs=(None, "dtsum_ptr", "A_ptr"),
        scalars=scalars,
        outputs=("states_ptr",),
        dtypes=(("states_ptr", "fp32"), ("dtsum_ptr", "fp32"), ("A_ptr", "fp32")),
        constexprs=(("NC", nc), ("BLOCK_ND", block_nd)),
        grid=(triton.cdiv(dstate * dim, block_nd), batch, 1),
        num_warps=_CARRY_WARPS,
    )


def output_launch(problem: ScanProblem) -> LaunchSpec:
    """Pass 3: every chunk from its carried entering state, writing y."""
    inputs = ("u_ptr", "delta_ptr", "A_ptr", "B_ptr", "C_ptr", "D_ptr", "bias_ptr", "states_ptr")
    config = problem.config
    return LaunchSpec(
        kernel=kernels._chunk_output_kernel,
        inputs=inputs,
        scalars=problem.scalars(),
        outputs=("out_ptr",),
        dtypes=problem.pointer_types((*inputs, "out_ptr")),
        constexprs=problem.flags(),
        grid=(problem.chunks[1], triton.cdiv(problem.dim, config.block_d), problem.batch),
        num_warps=config.num_warps,
        maxnreg=config.maxnreg,
    )


def problem_from_shapes(
    u: tuple[int, ...], A_t: tuple[int, ...], dtype: str, softplus: bool, sm_count: int  # noqa: N803
) -> ScanProblem:
    """The problem of a lowered node from its u [batch, dim, L] and A_t [N, dim] shapes."""
    if len(u) != 3 or len(A_t) != 2:
        raise ValueError(f"selective scan plugins need u [batch, dim, L] and A_t [N, dim], got {u} and {A_t}")
    if A_t[1] != u[1]:
        raise ValueError(f"A_t {A_t} does not match u {u}: A_t must be [N, dim={u[1]}]")
    return ScanProblem(u[0], u[1], u[2], A_t[0], dtype, bool(softplus), sm_count)


def check_state_inputs(shapes: dict[str, tuple[int, ...]], problem: ScanProblem) -> None:
    """One-line errors for inputs that do not fit the problem (the plugins read raw memory)."""
    b, d, length, n = problem.batch, problem.dim, problem.seqlen, problem.dstate
    want = {
        "u": (b, d, length), "delta": (b, d, length), "A_t": (n, d), "B_t": (b, length, n), "C_t": (b, length, n),
        "D": (d,), "delta_bias": (d,),
    }
    for name, shape in shapes.items():
        if name in want and tuple(shape) != want[name]:
            raise ValueError(f"selective scan plugin input {name} has shape {tuple(shape)}, expected {want[name]}")
