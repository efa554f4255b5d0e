"""Refuse an AOTInductor package whose wrapper library would crash the process that loads it.

Why (docs/DEPLOYMENT.md, "AOTInductor packages"): on the GPU machine every package, CPU or GPU,
ended the process with a segmentation fault while torch created the model container. The wrapper
``.so`` there had been linked with its own copy of libstdc++'s locale code (it defines
``std::locale::id::_M_id()``), and that copy disagrees with the process's libstdc++ about facet
ids, so the first ``std::regex`` the container builds calls a wrong virtual function. A wrapper
built against the shared libstdc++ (this project's CI machine) defines no such symbol and loads.

The check reads the ELF dynamic symbol table of each ``.so`` in the ``.pt2`` archive in pure
Python (no binutils needed), before torch touches the file, so the user gets one line naming
the problem instead of a crash.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

# std::locale::id::_M_id() const: defined only where libstdc++ itself was linked in.
LOCALE_ID_SYMBOL = b"_ZNKSt6locale2id5_M_idEv"
_SHT_DYNSYM = 11
_SHN_UNDEF = 0


def defined_dynamic_symbols(elf: BinaryIO) -> set[bytes]:
    """Names the ELF64 little-endian shared object in ``elf`` (seekable) defines in its dynamic symbol table.

    Reads only the headers and the two dynamic-symbol sections: a package's wrapper can hold
    hundreds of MB of weights.
    """

    def read(offset: int, size: int) -> bytes:
        elf.seek(offset)
        data = elf.read(size)
        if len(data) != size:
            raise ValueError("truncated file")
        return data

    header = read(0, 64)
    if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", header, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", header, 0x3A)
    table = read(shoff, shentsize * shnum)
    sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
    names: set[bytes] = set()
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind != _SHT_DYNSYM or entsize == 0:
            continue
        symbols, strings = read(offset, size), read(sections[link][4], sections[link][5])
        for index in range(size // entsize):
            name, _, _, shndx = struct.unpack_from("<IBBH", symbols, index * entsize)
            if shndx != _SHN_UNDEF and name:
                names.add(strings[name : strings.index(b"\0", name)])
    return names


def embedded_libstdcxx_reason(package: str | Path) -> str | None:
    """None when no library in the ``.pt2`` carries its own libstdc++ locale code, else why it would crash.

    Raises ValueError when ``package`` is not a readable ``.pt2`` (zip) archive or holds a broken library.
    """
    try:
        archive = zipfile.ZipFile(package)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{package} is not a readable AOTInductor package (.pt2 zip archive): {error}") from error
    with archive:
        for name in archive.namelist():
            if name.endswith(".so") and LOCALE_ID_SYMBOL in _library_symbols(archive, package, name):
                return (
                    f"{Path(name).name} in {Path(package).name} was linked with its own copy of libstdc++ "
                    "(it defines std::locale::id::_M_id), which crashes the process that loads it "
                    "(docs/DEPLOYMENT.md); package it again with this project's python -m export aoti, "
                    "which builds wrappers with a compiler that links the shared libstdc++"
                )
    return None


def _library_symbols(archive: zipfile.ZipFile, package: str | Path, name: str) -> set[bytes]:
    """``defined_dynamic_symbols`` of one archive member, read in place (no extraction)."""
    try:
        with archive.open(name) as library:
            return defined_dynamic_symbols(library)
    except (ValueError, struct.error, IndexError, zipfile.BadZipFile) as error:
        raise ValueError(f"{package}: {name} is not a valid shared library ({error})") from error
