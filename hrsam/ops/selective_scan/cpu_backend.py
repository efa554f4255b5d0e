"""Compiled CPU backend of the selective scan: ``cpu_scan.c`` built at first use, called by ctypes.

Why compile at first use: the kernel's speed comes from ``-march=native`` (the widest SIMD the
machine has) and glibc's vector ``expf`` (libmvec, reached through ``-ffast-math``), so it must be
built for the CPU it runs on; a wheel cannot ship one binary for all. The build takes well under a
second with gcc and is cached per user in ``$HRSAM_CACHE_DIR`` (default ``~/.cache/hrsam``) under
a name keyed by the source, the flags, the compiler's version and the CPU model and flags, so a
different CPU or compiler builds its own copy. Two processes building at once are safe: each
writes a private temporary file and renames it into place (rename is atomic on one filesystem).

Compiling and linking are separate steps on purpose: GCC links ``crtfastmath.o`` into anything
linked with ``-ffast-math``, and that object switches the loading thread to flush-to-zero for
the whole process; the kernel instead sets that mode on its own threads during a call only.

Nothing here raises when something is missing (not CPU tensors, no compiler, a failing build):
``supports`` returns the reason, the operator falls back to the reference backend and the reason
is logged once. The call releases the GIL (ctypes does) and keeps no state between calls, so
ONNX Runtime may call it from several threads at once; the one-time build is under a lock.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from hrsam.ops.backend import log_once
from hrsam.ops.selective_scan.reference import token_major_empty

SOURCE = Path(__file__).with_name("cpu_scan.c")
COMPILE_FLAGS = ("-O3", "-ffast-math", "-march=native", "-fopenmp", "-fPIC", "-std=c11")
LINK_FLAGS = ("-shared", "-fopenmp")
LINK_LIBRARIES = ("-lm",)  # glibc's libm.so pulls in libmvec (the vector expf) as needed
SYMBOL = "hrsam_selective_scan_f32"
CYCLE_SYMBOL = "hrsam_cycle_scan_f32"  # the Cycle-scan's weighted scan of a repeated sequence
# A build that has not finished after this long is treated as a failure, not waited on forever.
BUILD_TIMEOUT_S = 300
OP = "selective_scan"

logger = logging.getLogger("hrsam.ops")


class BuildError(RuntimeError):
    """The kernel could not be compiled or loaded; the message is one line saying why."""


def cache_dir() -> Path:
    """Directory of compiled kernels: $HRSAM_CACHE_DIR, else ~/.cache/hrsam."""
    configured = os.environ.get("HRSAM_CACHE_DIR")
    if configured:
        return Path(configured)
    try:
        return Path.home() / ".cache" / "hrsam"
    except RuntimeError as error:  # no $HOME and no password-database entry
        raise BuildError(f"no cache directory: set $HRSAM_CACHE_DIR ({error})") from error


def compiler_command() -> list[str]:
    """The C compiler as an argv prefix: $CC (may hold arguments, e.g. 'ccache gcc'), else cc or gcc."""
    configured = os.environ.get("CC")
    if configured:
        argv = shlex.split(configured)
        if not argv or shutil.which(argv[0]) is None:
            raise BuildError(f"the C compiler $CC={configured!r} was not found")
        return argv
    for name in ("cc", "gcc"):
        if shutil.which(name) is not None:
            return [name]
    raise BuildError("no C compiler found (cc or gcc on PATH, or set $CC)")


def _run(argv: list[str], step: str) -> subprocess.CompletedProcess[str]:
    """Run one compiler command; BuildError naming the step and the first error line when it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        raise BuildError(f"{step} with {argv[0]} did not finish within {BUILD_TIMEOUT_S} s") from error
    except OSError as error:
        raise BuildError(f"{step}: cannot run {argv[0]} ({error})") from error
    if done.returncode != 0:
        first = _first_error_line(done.stderr + done.stdout)
        raise BuildError(f"{step} with {argv[0]} failed (exit status {done.returncode}): {first}")
    return done


def _first_error_line(output: str) -> str:
    """The compiler's first line that mentions an error, else its first line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[0]


def _cpu_identity() -> str:
    """CPU model and feature flags (what -march=native depends on), from /proc/cpuinfo when present."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    keys = ("model name", "flags", "Features", "CPU implementer", "CPU part")  # x86, then Arm names
    return f"{platform.machine()} " + " ".join(f"{k}={fields[k]}" for k in keys if k in fields)


def library_path(compiler: list[str], directory: Path) -> Path:
    """Where the library for this source, flags, compiler and CPU lives (built or not)."""
    version = _run([*compiler, "--version"], "asking the C compiler its version").stdout
    try:
        source = SOURCE.read_bytes()
    except OSError as error:
        raise BuildError(f"cannot read the kernel source {SOURCE} ({error})") from error
    key = hashlib.sha256()
    for part in (source, repr((COMPILE_FLAGS, LINK_FLAGS, LINK_LIBRARIES, compiler)).encode(),
                 version.encode(), _cpu_identity().encode()):  # fmt: skip
        key.update(hashlib.sha256(part).digest())
    return directory / f"selective_scan_cpu-{key.hexdigest()[:20]}.so"


def build(compiler: list[str], directory: Path) -> tuple[Path, bool]:
    """Compile the kernel into ``directory`` unless already there; returns (path, whether it compiled)."""
    target = library_path(compiler, directory)
    if target.exists():
        return target, False
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BuildError(f"cannot create the cache directory {directory} ({error})") from error
    temporaries = []
    try:
        for suffix in (".o", ".so"):
            handle, name = tempfile.mkstemp(suffix=suffix, prefix=".build-", dir=directory)
            os.close(handle)
            temporaries.append(name)
        obj, lib = temporaries
        _run([*compiler, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", obj], f"compiling {SOURCE.name}")
        _run([*compiler, *LINK_FLAGS, obj, "-o", lib, *LINK_LIBRARIES], "linking the CPU kernel")
        os.replace(lib, target)
    except OSError as error:
        raise BuildError(f"cannot write to the cache directory {directory} ({error})") from error
    finally:
        for name in temporaries:
            Path(name).unlink(missing_ok=True)
    return target, True


class Kernels(NamedTuple):
    """The library's two entry points (C signatures in ``cpu_scan.c``)."""

    scan: Callable[..., int]
    cycle: Callable[..., int]


def _bind(path: Path) -> Kernels:
    """Load the library and declare the entry points' C signatures."""
    try:
        library = ctypes.CDLL(str(path))
        scan, cycle = getattr(library, SYMBOL), getattr(library, CYCLE_SYMBOL)
    except (OSError, AttributeError) as error:
        raise BuildError(f"cannot load {path.name} ({error})") from error
    scan.restype = cycle.restype = ctypes.c_int
    scan.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int64] * 4 + [ctypes.c_int, ctypes.c_int]
    cycle.argtypes = [ctypes.c_void_p] * 9 + [ctypes.c_int64] * 5 + [ctypes.c_int, ctypes.c_int]
    return Kernels(scan, cycle)


_lock = threading.Lock()
_loaded: tuple[Kernels | None, str | None] | None = None


def _kernel() -> tuple[Kernels | None, str | None]:
    """(entry points, None) or (None, why not); built and loaded once per process, under a lock."""
    global _loaded
    with _lock:
        if _loaded is None:
            try:
                start = time.perf_counter()
                path, compiled = build(compiler_command(), cache_dir())
                _loaded = (_bind(path), None)
                if compiled:
                    logger.info("hrsam::%s: compiled %s in %.2f s", OP, path, time.perf_counter() - start)
            except BuildError as error:
                _loaded = (None, str(error))
                log_once(OP, f"the compiled CPU kernel is unavailable, using the torch reference ({error})")
        return _loaded


def unavailable_reason() -> str | None:
    """None when the compiled kernel is loaded (building it on first call), else why not."""
    return _kernel()[1]


def forget_library() -> None:
    """Drop the loaded kernel's handle so the next call looks again (after changing $CC or the cache dir)."""
    global _loaded
    with _lock:
        _loaded = None


def supports(u: Tensor, *tensors: object) -> str | None:
    """None when this backend can run these inputs, else a short reason (see backend.py)."""
    if any(isinstance(t, Tensor) and t.device.type != "cpu" for t in (u, *tensors)):
        return "inputs are not CPU tensors"
    if u.dtype == torch.float64:
        return "float64 inputs (the kernel keeps a float32 state; the reference computes in float64)"
    return unavailable_reason()


def forward(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    delta_softplus: bool,
) -> Tensor:
    """y [batch, dim, L] in u's dtype; inputs converted to contiguous float32 (no copy if they are)."""
    batch, dim, seqlen = u.shape
    sizes = (batch, dim, A.shape[1], seqlen)
    return _call(_loaded_kernels().scan, (u, delta, A, B, C, D, delta_bias), *sizes, int(delta_softplus))


def cycle_forward(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    weights: Tensor,
    delta_softplus: bool,
) -> Tensor:
    """The Cycle-scan's weighted scan (``hrsam.ops.selective_scan.cycle``), y [batch, dim, L] float32
    (whatever u's dtype), stored token-major as ``hrsam::cycle_scan`` returns it.

    Two passes over L instead of one over R L (``cpu_scan.c``, ``cycle_block``).
    """
    batch, dim, seqlen = u.shape
    sizes = (batch, dim, A.shape[1], seqlen, weights.shape[1])
    inputs = (u, delta, A, B, C, D, delta_bias, weights)
    return _call(_loaded_kernels().cycle, inputs, *sizes, int(delta_softplus), token_major=True)


def _call(entry: Callable[..., int], inputs: tuple[Tensor, ...], *scalars: int, token_major: bool = False) -> Tensor:
    """Run a C entry point on contiguous float32 copies of ``inputs`` (u first) into a new y.

    The C signatures are (input pointers..., y, scalars..., threads); returns 0 or 1 (out of memory).
    token_major: the entry writes y token-major (``reference.token_major_empty``) and y stays float32,
    as ``hrsam::cycle_scan`` returns it; else y is laid out as u and converted to u's dtype.
    """
    u = inputs[0]
    args = [t.to(torch.float32).contiguous() for t in inputs]
    y = token_major_empty(args[0]) if token_major else torch.empty(u.shape, dtype=torch.float32)
    if entry(*(t.data_ptr() for t in (*args, y)), *scalars, torch.get_num_threads()) != 0:
        raise MemoryError(f"hrsam::{OP}: the CPU kernel could not allocate its per-thread workspace")
    return y if token_major else y.to(u.dtype)


def _loaded_kernels() -> Kernels:
    kernels, reason = _kernel()
    if kernels is None:
        raise RuntimeError(f"hrsam::{OP}: the CPU kernel is unavailable ({reason})")
    return kernels
