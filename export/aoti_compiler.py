"""Pick the C++ compiler AOTInductor links a package's wrapper library with.

Why: a wrapper linked with its own copy of libstdc++'s locale code crashes the process that loads
it (``trt_runtime.aoti_check``; docs/DEPLOYMENT.md, "AOTInductor packages"). Which compiler does
that is a property of the toolchain, not of the model: on the GPU machine ``CXX`` names a GCC under
``/opt/gcc`` that links libstdc++ into every shared library, while the system ``g++`` links the
shared one. Packaging takes minutes, so before it starts each candidate compiler builds a tiny
shared library that uses ``std::regex`` (a second or two) and the first whose library does not
define libstdc++'s locale ids is used. Inductor's own choice (``CXX``, else ``g++``) comes first,
so a machine where it works sees no change.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from export.cli import UserError
from trt_runtime.aoti_check import LOCALE_ID_SYMBOL, defined_dynamic_symbols

_PROBE_SOURCE = """
#include <regex>
#include <string>
extern "C" int hrsam_probe(const char* text) { return std::regex_match(std::string(text), std::regex("[a-z]+")); }
"""
# Where a Linux distribution keeps its own compiler, tried after Inductor's choice and PATH's.
SYSTEM_COMPILERS = ("/usr/bin/g++", "/usr/bin/c++")


@dataclass(frozen=True)
class CompilerChoice:
    """The compiler to use and, for each candidate tried before it, why it was passed over."""

    compiler: str
    passed_over: tuple[tuple[str, str], ...]


def inductor_compilers() -> list[str]:
    """The compilers Inductor would try, in its order (``config.cpp.cxx``: ``CXX`` or ``g++``)."""
    from torch._inductor import config

    configured = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    return [c for c in configured if c]


def candidates(first: list[str]) -> list[str]:
    """``first``, then every ``g++`` on PATH, then the system compilers; resolved, each file once."""
    path_gxx = [str(Path(d) / "g++") for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    seen: set[str] = set()
    found: list[str] = []
    for name in [*first, *path_gxx, *SYSTEM_COMPILERS]:
        resolved = shutil.which(name)
        if resolved is None or os.path.realpath(resolved) in seen:
            continue
        seen.add(os.path.realpath(resolved))
        found.append(resolved)
    return found


def embeds_libstdcxx_reason(compiler: str) -> str | None:
    """None when ``compiler`` links a shared library against the shared libstdc++, else why not."""
    with tempfile.TemporaryDirectory(prefix="hrsam_cxx_") as scratch:
        source, library = Path(scratch) / "probe.cpp", Path(scratch) / "probe.so"
        source.write_text(_PROBE_SOURCE)
        try:
            done = subprocess.run(
                [compiler, "-shared", "-fPIC", "-O0", str(source), "-o", str(library)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"cannot run it ({error})"
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            return f"cannot build a shared library ({lines[-1] if lines else f'exit code {done.returncode}'})"
        with library.open("rb") as elf:
            if LOCALE_ID_SYMBOL in defined_dynamic_symbols(elf):
                return "links its own copy of libstdc++ into shared libraries (defines std::locale::id::_M_id)"
    return None


def pick_compiler() -> CompilerChoice:
    """The first candidate whose shared libraries use the shared libstdc++; UserError when none does."""
    return first_usable(tuple(candidates(inductor_compilers())))


@functools.cache
def first_usable(compilers: tuple[str, ...]) -> CompilerChoice:
    """``pick_compiler`` over given candidates, probed once per process (a probe takes a second or two)."""
    passed_over: list[tuple[str, str]] = []
    for compiler in compilers:
        reason = embeds_libstdcxx_reason(compiler)
        if reason is None:
            return CompilerChoice(compiler, tuple(passed_over))
        passed_over.append((compiler, reason))
    tried = "; ".join(f"{c}: {r}" for c, r in passed_over) or "no C++ compiler found (CXX, g++ on PATH)"
    raise UserError(
        "AOTInductor needs a C++ compiler that links the shared libstdc++ (a package linked with its own "
        f"copy crashes when loaded, docs/DEPLOYMENT.md); tried {tried}"
    )
