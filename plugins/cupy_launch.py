"""Launch a ``CompiledKernel`` from raw device pointers with cupy, the way TensorRT launches it.

TensorRT loads the PTX an AOT plugin returns and calls the kernel with (input pointers, int32
extra args, output pointers), the launch grid, ``num_warps * 32`` threads and the dynamic shared
memory size. This module does exactly that through the CUDA driver (cupy's ``Module``), outside
Triton and outside TensorRT. Three users: the plugins' JIT ``impl`` (TensorRT versions without AOT
plugins), the GPU test of the AOT artefacts (``tests/test_aot_launch.py``) and the TensorRT-RTX
build script (``benchmarks/trt_rtx_build.py``). cupy is imported lazily: it is optional.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from plugins.aot import CompiledKernel

# CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES in cuda.h; needed above the 48 KiB default.
_MAX_DYNAMIC_SHARED_ATTRIBUTE = 8
_DEFAULT_SHARED_LIMIT = 48 * 1024


def _cupy():  # noqa: ANN202 - the cupy module
    try:
        import cupy
    except ImportError as error:
        raise ImportError(f"launching compiled kernels needs cupy (pip install cupy-cuda12x): {error}") from None
    return cupy


@functools.lru_cache(maxsize=64)
def _load(ptx: str, name: str, shared: int) -> tuple:
    """(module, function): the PTX loaded once through the driver's JIT, as TensorRT does.

    The module is returned with the function so the cache keeps it loaded.
    """
    cupy = _cupy()
    module = cupy.cuda.function.Module()
    module.load(ptx.encode())
    function = module.get_function(name)
    if shared > _DEFAULT_SHARED_LIMIT:
        cupy.cuda.driver.funcSetAttribute(function.ptr, _MAX_DYNAMIC_SHARED_ATTRIBUTE, shared)
    return module, function


def kernel_arguments(kernel: CompiledKernel, inputs: Sequence[int], outputs: Sequence[int]) -> list:
    """TensorRT's argument list: input pointers, int32 extra args, output pointers."""
    if len(inputs) != kernel.num_inputs or len(outputs) != kernel.num_outputs:
        raise ValueError(
            f"{kernel.name} takes {kernel.num_inputs} inputs and {kernel.num_outputs} outputs, "
            f"got {len(inputs)} and {len(outputs)}"
        )
    return [
        *(np.uint64(pointer) for pointer in inputs),
        *(np.int32(value) for value in kernel.extra_args),
        *(np.uint64(pointer) for pointer in outputs),
    ]


def launch(kernel: CompiledKernel, inputs: Sequence[int], outputs: Sequence[int], stream: int = 0) -> None:
    """Launch ``kernel`` on CUDA stream handle ``stream`` (0: the legacy default stream)."""
    cupy = _cupy()
    _, function = _load(kernel.ptx, kernel.name, kernel.shared)
    arguments = kernel_arguments(kernel, inputs, outputs)
    handle = cupy.cuda.Stream.null if stream == 0 else cupy.cuda.ExternalStream(stream)
    function(kernel.grid, kernel.block, arguments, shared_mem=kernel.shared, stream=handle)
