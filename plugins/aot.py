"""Ahead-of-time compilation of a Triton kernel into what a TensorRT AOT plugin returns.

TensorRT's ``tensorrt.plugin.aot_impl`` returns (kernel name, PTX, launch params, extra args) and
TensorRT launches that PTX itself, with no Python, passing the kernel arguments in ONE fixed
order: the plugin's input tensors, then the extra int32 scalars, then its output tensors. A Triton
kernel has its own parameter order (ours put outputs before scalars) plus hidden trailing
parameters that Triton's launcher fills (global scratch, and since Triton 3.5 profile scratch).
So this module compiles the kernel with ``triton.compile`` for the build GPU and rewrites the
PTX entry's parameter list into TensorRT's order, dropping the hidden parameters after checking
that the kernel never reads them. Parameters are referenced by name inside the PTX body
(``ld.param [<kernel>_param_<i>]``), so reordering their declarations changes only the ABI.

Specialisation mirrors Triton's JIT launcher, so the AOT kernel is the one ``kernel[grid](...)``
would build for the same values: int scalars equal to 1 become constants, scalars divisible by 16
and all pointers get a 16-byte divisibility hint (vector loads), except the parameters the kernel
lists in ``do_not_specialize`` / ``do_not_specialize_on_alignment``. The pointer hint assumes
TensorRT's tensors start 16-byte aligned (its activation allocations are 256-byte aligned).

Both plugins use this module (``plugins/attention.py``, ``plugins/scan.py``); the GPU test
(``tests/test_aot_launch.py``) launches the rewritten PTX with cupy exactly as TensorRT would.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget

# Hint Triton's JIT launcher gives a pointer or an int that is a multiple of 16.
DIVISIBILITY = 16
# Dynamic shared memory a kernel may use without the opt-in attribute (cuFuncSetAttribute). TensorRT
# does not document that its AOT launch opts in, so plugin kernels stay within it.
DEFAULT_SHARED_LIMIT = 48 * 1024


@dataclass(frozen=True)
class LaunchSpec:
    """One kernel launch, described in the plugin's terms.

    ``kernel``: a ``@triton.jit`` function; ``inputs`` / ``outputs``: its pointer parameters fed by
    the plugin's input / output tensors, in plugin order (None: TensorRT passes that tensor but the
    kernel has no parameter for it, e.g. an output aliased to an input the kernel writes through);
    ``scalars``: its int32 parameters with
    their values, in the order TensorRT passes extra args; ``dtypes``: the Triton element type of
    every pointer parameter ("fp32", "bf16", "i32", ...); ``constexprs``: compile-time constants;
    ``grid``: the launch grid (x, y, z).
    """

    kernel: triton.runtime.jit.JITFunction
    inputs: tuple[str | None, ...]
    scalars: tuple[tuple[str, int], ...]
    outputs: tuple[str | None, ...]
    dtypes: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    grid: tuple[int, int, int]
    num_warps: int
    num_stages: int = 3
    maxnreg: int | None = None

    @property
    def block(self) -> tuple[int, int, int]:
        return (32 * self.num_warps, 1, 1)


@dataclass(frozen=True)
class CompiledKernel:
    """What ``aot_impl`` hands TensorRT: PTX whose parameters follow TensorRT's order.

    ``extra_args``: the int32 values TensorRT must pass between the input and output pointers
    (scalars that became compile-time constants are gone); ``shared``: dynamic shared memory in
    bytes per block.
    """

    name: str
    ptx: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared: int
    extra_args: tuple[int, ...]
    num_inputs: int
    num_outputs: int


def _flag_set(kernel: triton.runtime.jit.JITFunction, attribute: str) -> set[str]:
    """Parameter names listed in a JIT function's do_not_specialize* attribute (names or indices)."""
    names = kernel.arg_names
    return {names[item] if isinstance(item, int) else item for item in getattr(kernel, attribute, None) or ()}


def _check_covers(spec: LaunchSpec) -> None:
    """Every runtime parameter of the kernel is fed exactly once, and nothing else is."""
    constexprs = dict(spec.constexprs)
    runtime = [name for name in spec.kernel.arg_names if name not in constexprs]
    pointers = [name for name in (*spec.inputs, *spec.outputs) if name is not None]
    fed = [*pointers, *(name for name, _ in spec.scalars)]
    if sorted(fed) != sorted(runtime):
        raise ValueError(
            f"launch of {spec.kernel.__name__} feeds {fed} but the kernel's runtime parameters are {runtime}"
        )
    missing = [name for name in pointers if name not in dict(spec.dtypes)]
    if missing:
        raise ValueError(f"launch of {spec.kernel.__name__} gives no element type for pointers {missing}")
    too_big = [(name, value) for name, value in spec.scalars if not -(2**31) <= value < 2**31]
    if too_big:
        raise ValueError(f"launch of {spec.kernel.__name__}: scalars {too_big} do not fit TensorRT's int32 extra args")


def specialize(spec: LaunchSpec) -> tuple[dict[str, str], dict[str, object], dict[tuple[int, ...], list]]:
    """Triton signature, constants and attributes for ``spec``, specialised as the JIT launcher does."""
    _check_covers(spec)
    names = spec.kernel.arg_names
    no_specialize = _flag_set(spec.kernel, "do_not_specialize")
    no_align = no_specialize | _flag_set(spec.kernel, "do_not_specialize_on_alignment")
    constants = dict(spec.constexprs)
    signature: dict[str, str] = {}
    attrs: dict[tuple[int, ...], list] = {}
    pointers = dict(spec.dtypes)
    scalars = dict(spec.scalars)
    for index, name in enumerate(names):
        if name in constants:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = f"*{pointers[name]}"
            if name not in no_align:
                attrs[(index,)] = [["tt.divisibility", DIVISIBILITY]]
        elif scalars[name] == 1 and name not in no_specialize:
            signature[name] = "constexpr"
            constants[name] = 1
        else:
            signature[name] = "i32"
            if scalars[name] % DIVISIBILITY == 0 and name not in no_align:
                attrs[(index,)] = [["tt.divisibility", DIVISIBILITY]]
    return signature, constants, attrs


_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(([^)]*)\)")


def reorder_ptx_params(ptx: str, order: list[int | None], runtime_count: int) -> str:
    """PTX whose entry declares parameters ``order`` (indices into the original list), nothing else.

    The original entry must have ``runtime_count`` parameters followed only by Triton's hidden
    ones; a hidden parameter the body reads (a kernel that needs scratch memory) is an error,
    because TensorRT would not pass it. None in ``order`` declares an unused 64-bit parameter
    there (a pointer TensorRT passes that the kernel does not take).
    """
    match = _ENTRY.search(ptx)
    if match is None:
        raise ValueError("no .entry in the PTX: not a kernel compiled by Triton")
    name = match.group(1)
    params = [p.strip() for p in match.group(2).split(",") if p.strip()]
    if len(params) < runtime_count:
        raise ValueError(f"PTX entry {name} has {len(params)} parameters, fewer than the {runtime_count} expected")
    body = ptx[match.end():]
    for hidden in range(runtime_count, len(params)):
        if re.search(rf"\[{name}_param_{hidden}(\+\d+)?\]", body):
            raise ValueError(
                f"{name} reads Triton's hidden parameter {hidden} (scratch memory), which a TensorRT AOT "
                "plugin cannot provide"
            )
    used = [i for i in order if i is not None]
    if sorted(used) != list(range(runtime_count)):
        raise ValueError(f"parameter order {order} is not a permutation of {runtime_count} parameters")
    unused = f".param .u64 .ptr .global .align 1 {name}_param_unused"
    declared = ",\n\t".join(params[i] if i is not None else f"{unused}{slot}" for slot, i in enumerate(order))
    return f"{ptx[: match.start(2)]}\n\t{declared}\n{ptx[match.end(2):]}"


def _check_metadata(name: str, metadata: object) -> None:
    """Refuse kernels that need launcher support TensorRT's AOT path does not give."""
    needs = {
        "global scratch memory": getattr(metadata, "global_scratch_size", 0),
        "profile scratch memory": getattr(metadata, "profile_scratch_size", 0),
        "thread-block clusters": getattr(metadata, "num_ctas", 1) != 1,
        "a cooperative launch": getattr(metadata, "launch_cooperative_grid", False),
        "programmatic dependent launch": getattr(metadata, "launch_pdl", False),
        "tensor memory": getattr(metadata, "tmem_size", 0),
    }
    wanted = [what for what, value in needs.items() if value]
    if wanted:
        raise ValueError(f"kernel {name} needs {', '.join(wanted)}: TensorRT's AOT launch cannot provide it")


@functools.lru_cache(maxsize=256)
def compile_launch(spec: LaunchSpec, capability: int) -> CompiledKernel:
    """Compile ``spec`` for compute capability ``capability`` (e.g. 90) into TensorRT's form.

    Cached: TensorRT asks for the kernel once per type/format combination and tactic. Runs on a
    machine without a GPU too (Triton ships LLVM and ptxas), which is how the CPU tests check it.
    """
    signature, constants, attrs = specialize(spec)
    target = GPUTarget("cuda", capability, 32)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    if spec.maxnreg is not None:
        options["maxnreg"] = spec.maxnreg
    backend = triton.compiler.make_backend(target)
    source = triton.compiler.ASTSource(spec.kernel, signature, constants, attrs)
    compiled = triton.compile(source, target=target, options=backend.parse_options(options).__dict__)
    _check_metadata(compiled.metadata.name, compiled.metadata)
    runtime = [name for name in spec.kernel.arg_names if signature[name] != "constexpr"]
    kept_scalars = [(name, value) for name, value in spec.scalars if name in runtime]
    trt_order = [*spec.inputs, *(name for name, _ in kept_scalars), *spec.outputs]
    order = [None if name is None else runtime.index(name) for name in trt_order]
    ptx = reorder_ptx_params(compiled.asm["ptx"], order, len(runtime))
    return CompiledKernel(
        name=compiled.metadata.name,
        ptx=ptx,
        grid=spec.grid,
        block=spec.block,
        shared=int(compiled.metadata.shared),
        extra_args=tuple(value for _, value in kept_scalars),
        num_inputs=len(spec.inputs),
        num_outputs=len(spec.outputs),
    )


def compile_fitting(
    candidates: tuple[LaunchSpec, ...], capability: int, max_shared: int = DEFAULT_SHARED_LIMIT
) -> CompiledKernel:
    """The first candidate (in preference order) whose kernel needs at most ``max_shared`` bytes."""
    sizes = []
    for spec in candidates:
        kernel = compile_launch(spec, capability)
        if kernel.shared <= max_shared:
            return kernel
        sizes.append(kernel.shared)
    name = candidates[0].kernel.__name__ if candidates else "kernel"
    raise ValueError(f"every {name} configuration needs more than {max_shared} bytes of shared memory: {sizes}")


def ptx_params(ptx: str) -> list[str]:
    """The PTX types of the entry's parameters in declaration order ("u64" pointers, "u32" ints)."""
    match = _ENTRY.search(ptx)
    if match is None:
        raise ValueError("no .entry in the PTX")
    return [re.search(r"\.param\s+\.(\w+)", p).group(1) for p in match.group(2).split(",") if p.strip()]
