"""Launcher of the single-pass CUDA scan experiment (``scan_kernel.cu``), compiled by NVRTC.

This is a measured experiment, not a backend of ``hrsam::selective_scan``: on the H200 it is
about 12% faster than the chunked Triton kernel per float32 call at L = 49152 but slower for
bfloat16 and no better at L = 12288, and 3.9x the exponential bound, far from the 2x target
(docs/BENCHMARKS.md, "Single-pass CUDA experiment"). Nothing in the package calls it. It is
kept, runnable through ``bench.py``, because it is the design the 2x target points at and the
next attempt should start from its numbers.

Why CUDA C++ and not Triton for this design: it needs one recurrence per lane and a read-out
that sums across lanes once per tile (a reduce-scatter over registers). Triton chooses register
layouts itself and lowers a cross-lane sum to five shuffles per output.

NVRTC ships with every CUDA build of PyTorch (``nvidia-cuda-nvrtc``) and the kernel has no
#include, so nothing is built at install time and no CUDA toolkit is needed. Each
(dtype, N, configuration) is compiled once per process (~0.4 s on the H200 machine).
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("scan_kernel.cu")
KERNEL_NAME = "selective_scan_fwd"
_IN_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@dataclass(frozen=True)
class CudaScanConfig:
    """Compile-time shape of the kernel.

    tile: time steps per tile (a multiple of 4 and of N); warps: warps per block (they share
    each B/C tile); prefetch: how many tiles ahead u and delta are prefetched into L2 (0: off).
    """

    tile: int = 32
    warps: int = 2
    prefetch: int = 8


# Fastest of the sweep on the H200 (docs/BENCHMARKS.md).
DEFAULT_CONFIG = CudaScanConfig()


def unsupported_reason(u: Tensor, dstate: int, config: CudaScanConfig = DEFAULT_CONFIG) -> str | None:
    """None when the kernel can run these inputs, else why not."""
    if not u.is_cuda:
        return "inputs are not on a CUDA device"
    if torch.version.cuda is None:
        return "this PyTorch build has no CUDA (NVRTC) support"
    if u.dtype not in _IN_KIND:
        return f"{u.dtype} inputs (the kernel takes float32, float16 and bfloat16)"
    if dstate & (dstate - 1) or dstate > 32 or config.tile % dstate:
        return f"N = {dstate} (the kernel needs a power of two <= 32 dividing the tile, {config.tile})"
    if torch.cuda.get_device_capability(u.device) < (8, 0):
        return "GPUs older than compute capability 8.0 (the kernel stages B/C with cp.async)"
    return None


def _check_nvrtc(lib: ctypes.CDLL, result: int, program: ctypes.c_void_p | None = None) -> None:
    if result == 0:
        return
    message = ctypes.c_char_p(lib.nvrtcGetErrorString(result)).value
    log = ""
    if program is not None:
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        buffer = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, buffer)
        log = buffer.value.decode(errors="replace")
    raise RuntimeError(f"NVRTC failed ({message.decode() if message else result}): {log}")


def compile_cubin(defines: dict[str, int], arch: str) -> bytes:
    """Compile scan_kernel.cu with these macros for ``arch`` (e.g. "sm_90") and return the cubin."""
    from torch.cuda._utils import _get_gpu_rtc_library

    lib = _get_gpu_rtc_library()
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    program = ctypes.c_void_p()
    source = SOURCE.read_bytes()
    _check_nvrtc(lib, lib.nvrtcCreateProgram(ctypes.byref(program), source, b"scan_kernel.cu", 0, None, None))
    try:
        options = [f"--gpu-architecture={arch}", "-std=c++17", "-default-device"]
        options += [f"-D{key}={value}" for key, value in defines.items()]
        encoded = [o.encode() for o in options]
        array = (ctypes.c_char_p * len(encoded))(*encoded)
        _check_nvrtc(lib, lib.nvrtcCompileProgram(program, len(encoded), array), program)
        size = ctypes.c_size_t()
        _check_nvrtc(lib, lib.nvrtcGetCUBINSize(program, ctypes.byref(size)))
        cubin = ctypes.create_string_buffer(size.value)
        _check_nvrtc(lib, lib.nvrtcGetCUBIN(program, cubin))
        return cubin.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


def kernel_defines(dtype: torch.dtype, dstate: int, config: CudaScanConfig) -> dict[str, int]:
    """The macros scan_kernel.cu is compiled with for this dtype, N and configuration."""
    return {
        "IN_KIND": _IN_KIND[dtype],
        "NSTATE": dstate,
        "TILE": config.tile,
        "NWARPS": config.warps,
        "PREFETCH": config.prefetch,
    }


@functools.cache
def _kernel(dtype: torch.dtype, dstate: int, config: CudaScanConfig, device_index: int):
    from torch.cuda._utils import _cuda_load_module

    major, minor = torch.cuda.get_device_capability(device_index)
    cubin = compile_cubin(kernel_defines(dtype, dstate, config), f"sm_{major}{minor}")
    with torch.cuda.device(device_index):
        return _cuda_load_module(cubin, [KERNEL_NAME])[KERNEL_NAME]


def interleave_bc(B: Tensor, C: Tensor, tile: int) -> Tensor:
    """[batch, (tiles + 1) * tile, N, 2] float32: (B, C) interleaved per step, zeros past L.

    One tile of B and C is then one contiguous block the kernel stages into shared memory with
    16-byte loads; the spare zero tile lets the kernel stage "the next tile" without a bounds
    check. B and C are N/dim of the input bytes, so the copy is cheap.
    """
    batch, dstate, seqlen = B.shape
    tiles = -(-seqlen // tile)
    bc = B.new_zeros(batch, (tiles + 1) * tile, dstate, 2, dtype=torch.float32)
    bc[:, :seqlen, :, 0] = B.transpose(1, 2)
    bc[:, :seqlen, :, 1] = C.transpose(1, 2)
    return bc


def selective_scan_cuda(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    delta_softplus: bool,
    config: CudaScanConfig = DEFAULT_CONFIG,
) -> Tensor:
    """Forward selective scan with the single-pass kernel; inputs as hrsam::selective_scan checks them.

    u, delta, B, C: float32/float16/bfloat16 (one dtype); A, D, delta_bias: float32.
    Returns y [batch, dim, L] in u's dtype.
    """
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    u, delta = u.contiguous(), delta.contiguous()
    A, D, delta_bias = A.float().contiguous(), D.float().contiguous(), delta_bias.float().contiguous()
    bc = interleave_bc(B, C, config.tile)
    out = torch.empty_like(u)
    channels_per_block = config.warps * 32 // dstate
    kernel = _kernel(u.dtype, dstate, config, u.device.index if u.device.index is not None else 0)
    kernel(
        grid=(-(-dim // channels_per_block), batch, 1),
        block=(32 * config.warps, 1, 1),
        args=[u, delta, A, bc, D, delta_bias, out, dim, seqlen, bc.shape[1] // config.tile - 1, int(delta_softplus)],
    )
    return out
