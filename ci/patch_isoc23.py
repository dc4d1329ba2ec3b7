# ruff: noqa: INP001  # a script run by ci/apptainer-install.sh, not part of a package
"""Make ELF binaries built against glibc >= 2.38 load on an older glibc by retargeting their C23 imports.

glibc 2.38 added ``__isoc23_strtol`` and friends (C23 number parsing, which also accepts ``0b`` prefixes); compilers
emit them for plain ``strtol`` calls. Debian unstable's apptainer imports only ``__isoc23_strtol`` and
``__isoc23_strtoul`` (version ``GLIBC_2.38``), which Debian 12's glibc 2.36 lacks: everything else it needs exists.

For each ``__isoc23_NAME`` import this rewrites, in place:

- the symbol's name to ``NAME``: ``st_name`` moves 9 bytes into the same ``.dynstr`` string (``__isoc23_strtol``
  ends with ``strtol``), so no string table grows;
- the version requirement those imports used (``GLIBC_2.38``) into ``GLIBC_2.2.5``, the version of the plain
  functions, provided no other import needs it (else the binary cannot run on the old glibc anyway: refuse).

Undefined symbols are not in the ``.gnu.hash`` table, so nothing else changes. Running it again on a patched file
does nothing. Usage: ``python3 patch_isoc23.py FILE...`` (needs pyelftools: ``python3-pyelftools`` on Debian).
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from elftools.common.exceptions import ELFError  # type: ignore[import-not-found,import-untyped,unused-ignore]
from elftools.elf.elffile import ELFFile  # type: ignore[import-not-found,import-untyped,unused-ignore]

if TYPE_CHECKING:
    from collections.abc import Iterator

PREFIX: Final = "__isoc23_"
TARGET_VERSION: Final = "GLIBC_2.2.5"
_WORD: Final = struct.Struct("<I")
_HALF: Final = struct.Struct("<H")
_SYM: Final = struct.Struct("<IBBHQQ")  # Elf64_Sym: st_name, st_info, st_other, st_shndx, st_value, st_size
# Elf64_Vernaux is vna_hash (4 bytes), vna_flags (2), vna_other (2), vna_name (4), vna_next (4).
_VNA_HASH: Final = 0
_VNA_NAME: Final = 8


class PatchError(Exception):
    """The file cannot be patched; the message says why."""


@dataclass(frozen=True)
class Import:
    """An undefined dynamic symbol to retarget: its index, name and version index."""

    index: int
    name: str
    version_index: int


@dataclass(frozen=True)
class Requirement:
    """One ``Elf64_Vernaux`` entry: where it is in the file and what it holds."""

    offset: int
    name: str
    name_offset: int
    version_index: int


def elf_hash(name: str) -> int:
    """Return the SysV ELF hash of *name*, as ``vna_hash`` holds it."""
    value = 0
    for byte in name.encode():
        value = ((value << 4) + byte) & 0xFFFFFFFF
        high = value & 0xF0000000
        if high:
            value ^= high >> 24
        value &= ~high & 0xFFFFFFFF
    return value


def _section(elf: Any, name: str) -> Any:  # noqa: ANN401  # pyelftools has no type hints
    section = elf.get_section_by_name(name)
    if section is None:
        msg = f"no {name} section"
        raise PatchError(msg)
    return section


@dataclass(frozen=True)
class Symbols:
    """The dynamic symbol table, read raw (pyelftools builds an object per symbol: seconds for Go binaries)."""

    names: list[str]
    name_offsets: list[int]
    undefined: list[bool]
    versions: list[int]
    table_offset: int
    entry_size: int


def _symbols(elf: Any) -> Symbols:  # noqa: ANN401
    dynsym = _section(elf, ".dynsym")
    strings = elf.get_section(dynsym["sh_link"]).data()
    rows = list(_SYM.iter_unpack(dynsym.data()))
    versions = [row[0] for row in _HALF.iter_unpack(_section(elf, ".gnu.version").data())]
    return Symbols(
        names=[strings[row[0] : strings.index(b"\0", row[0])].decode() for row in rows],
        name_offsets=[row[0] for row in rows],
        undefined=[row[3] == 0 for row in rows],
        versions=versions,
        table_offset=dynsym["sh_offset"],
        entry_size=dynsym["sh_entsize"],
    )


def _isoc23_imports(symbols: Symbols) -> list[Import]:
    return [
        Import(index, name, symbols.versions[index])
        for index, name in enumerate(symbols.names)
        if name.startswith(PREFIX) and symbols.undefined[index]
    ]


def _requirements(elf: Any) -> Iterator[Requirement]:  # noqa: ANN401
    section = _section(elf, ".gnu.version_r")
    offset = section["sh_offset"]
    for verneed, auxiliaries in section.iter_versions():
        aux_offset = offset + verneed["vn_aux"]
        for aux in auxiliaries:
            yield Requirement(aux_offset, aux.name, aux["vna_name"], aux["vna_other"])
            aux_offset += aux["vna_next"]
        offset += verneed["vn_next"]


def _users(symbols: Symbols, version_index: int) -> set[str]:
    # Bit 15 of a versym entry marks a hidden version: the index is the low 15 bits.
    return {
        name for name, version in zip(symbols.names, symbols.versions, strict=True) if version & 0x7FFF == version_index
    }


def _plan(elf: Any, symbols: Symbols, imports: list[Import]) -> list[tuple[int, bytes]]:  # noqa: ANN401
    """Return the (file offset, new bytes) writes that retarget *imports*."""
    writes = []
    for item in imports:
        where = symbols.table_offset + item.index * symbols.entry_size
        writes.append((where, _WORD.pack(symbols.name_offsets[item.index] + len(PREFIX))))
    requirements = list(_requirements(elf))
    target = next((r for r in requirements if r.name == TARGET_VERSION), None)
    if target is None:
        msg = f"no {TARGET_VERSION} requirement to borrow the name of"
        raise PatchError(msg)
    patched = {item.name for item in imports}
    for version_index in {item.version_index & 0x7FFF for item in imports}:
        others = _users(symbols, version_index) - patched
        requirement = next((r for r in requirements if r.version_index == version_index), None)
        if requirement is None or requirement.name == TARGET_VERSION:
            continue  # unversioned import, or already retargeted
        if others:
            msg = f"{requirement.name} is also needed by {', '.join(sorted(others))}: this glibc cannot run it"
            raise PatchError(msg)
        # Only the hash and the name change: vna_other keeps the index the imports refer to.
        writes.append((requirement.offset + _VNA_HASH, _WORD.pack(elf_hash(TARGET_VERSION))))
        writes.append((requirement.offset + _VNA_NAME, _WORD.pack(target.name_offset)))
    return writes


def patch(path: str) -> list[str]:
    """Retarget the ``__isoc23_*`` imports of the ELF file *path* in place.

    :returns: the names of the imports retargeted (empty when there were none: already patched)
    :raises PatchError: when the file cannot be patched
    """
    with Path(path).open("r+b") as stream:
        elf = ELFFile(stream)
        if elf.elfclass != 64 or not elf.little_endian:
            msg = "only 64-bit little-endian ELF files are supported"
            raise PatchError(msg)
        symbols = _symbols(elf)
        imports = _isoc23_imports(symbols)
        writes = _plan(elf, symbols, imports) if imports else []
        _write(stream, writes)
    return [item.name for item in imports]


def _write(stream: IO[bytes], writes: list[tuple[int, bytes]]) -> None:
    for offset, data in writes:
        stream.seek(offset)
        stream.write(data)


def main(argv: list[str]) -> int:
    """Patch every file named in *argv*.

    :returns: 0, or 1 when one could not be patched
    """
    status = 0
    for path in argv:
        try:
            names = patch(path)
        except (PatchError, OSError, ValueError, ELFError) as exc:  # ValueError, ELFError: not a sound ELF file
            sys.stderr.write(f"patch_isoc23: cannot patch {path}: {exc}\n")
            status = 1
            continue
        done = ", ".join(f"{name} -> {name[len(PREFIX) :]}" for name in names) or "nothing to do"
        sys.stderr.write(f"patch_isoc23: {path}: {done}\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
