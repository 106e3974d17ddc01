"""The Go linker's build information record (``.go.buildinfo``): Go version, main module, settings.

The record is what ``go version -m`` prints. Its format (cmd/go/internal/version, debug/buildinfo):
a 32-byte header that starts with the magic ``\\xff Go buildinf:``, then the pointer size and a flags
byte. Since Go 1.18 (flag bit 1) the version and module strings follow inline, each prefixed by a
uvarint length; before that the header holds two pointers to Go string headers elsewhere in the
image. The module string is wrapped in two 16-byte sentinels.

Errors: every parse failure is a ``receiver.errors`` type; a file without the record is
``NotAGoBinary``. Cost: one section read and a few string splits.
"""

import re
from dataclasses import dataclass, field

from receiver.errors import CorruptBinary, NotAGoBinary

MAGIC = b"\xff Go buildinf:"
HEADER_SIZE = 32
FLAG_BIG_ENDIAN = 0x1
FLAG_INLINE_STRINGS = 0x2
# Enough to hold any real module list; a larger length is a corrupt record, not a big program.
MAX_STRING = 1 << 24


@dataclass(frozen=True)
class BuildInfo:
    """What the Go linker recorded about a build: the answer of ``go version -m``."""

    go_version: str                       # "go1.25.5"
    path: str = ""                        # the main package's import path
    module: str = ""                      # the main module's path
    module_version: str = ""              # "(devel)" for a local build
    settings: dict = field(default_factory=dict)   # "-ldflags", "CGO_ENABLED", "GOARCH", "vcs.revision"...
    deps: tuple = ()                      # ((path, version), ...)

    @property
    def version_tuple(self):
        """(major, minor, patch) of the Go release; (0, 0, 0) when the version is not a release."""
        return parse_go_version(self.go_version)


def parse_go_version(version):
    """ "go1.25.5" -> (1, 25, 5); "go1.21rc2" -> (1, 21, 0); garbage -> (0, 0, 0)."""
    # search, not match: development builds say "devel go1.27-abcdef ...".
    m = re.search(r"go(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def find_record(image):
    """(vaddr, bytes) of the build info record: the ``.go.buildinfo`` section, or the magic searched
    in the writable segments (the Go linker aligns it to 16 bytes) when section headers are gone."""
    sect = image.section(".go.buildinfo")
    if sect is not None and sect[1][:len(MAGIC)] == MAGIC:
        return sect
    for vaddr, data in image.writable_segments():
        pos = data.find(MAGIC)
        while pos >= 0:
            if pos % 16 == 0:
                return vaddr + pos, data[pos:]
            pos = data.find(MAGIC, pos + 1)
    raise NotAGoBinary(
        f"{image.path}: no Go build info (.go.buildinfo); not a Go binary built by the gc toolchain"
    )


def parse(image):
    """BuildInfo of an image (see ``receiver.binary.ElfImage``). Raises NotAGoBinary, CorruptBinary."""
    vaddr, data = find_record(image)
    return parse_record(data, image.read)


def parse_record(data, read=None):
    """BuildInfo from the bytes at the record's start. ``read(vaddr, n)`` resolves the pointers of
    pre-1.18 records; without it such a record is refused as corrupt."""
    data = bytes(data)
    if len(data) < HEADER_SIZE or not data.startswith(MAGIC):
        raise CorruptBinary("build info record is truncated or lacks its magic")
    ptr_size, flags = data[14], data[15]
    if flags & FLAG_INLINE_STRINGS:
        version, pos = _read_varint_string(data, HEADER_SIZE)
        mod, _ = _read_varint_string(data, pos)
    else:
        if ptr_size not in (4, 8) or read is None:
            raise CorruptBinary(f"build info record has pointer size {ptr_size}")
        order = "big" if flags & FLAG_BIG_ENDIAN else "little"
        version = _read_pointer_string(data[16:16 + ptr_size], ptr_size, order, read)
        mod = _read_pointer_string(data[16 + ptr_size:16 + 2 * ptr_size], ptr_size, order, read)
    if not version.startswith("go") and not version.startswith("devel"):
        raise CorruptBinary(f"build info record has an unreadable Go version {version[:40]!r}")
    return parse_modinfo(version, mod)


def _read_varint_string(data, pos):
    length, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CorruptBinary("build info record is truncated inside a string length")
        b = data[pos]
        pos += 1
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    if length > MAX_STRING or pos + length > len(data):
        raise CorruptBinary(f"build info string of {length} bytes runs past the record")
    return data[pos:pos + length].decode("utf-8", "replace"), pos + length


def _read_pointer_string(ptr_bytes, ptr_size, order, read):
    if len(ptr_bytes) < ptr_size:
        raise CorruptBinary("build info record is truncated inside its pointers")
    header = read(int.from_bytes(ptr_bytes, order), 2 * ptr_size)
    addr = int.from_bytes(header[:ptr_size], order)
    length = int.from_bytes(header[ptr_size:2 * ptr_size], order)
    if length > MAX_STRING:
        raise CorruptBinary(f"build info string of {length} bytes is implausible")
    return read(addr, length).decode("utf-8", "replace") if length else ""


def parse_modinfo(version, mod):
    """BuildInfo from the version and the module text (tab-separated lines, as `go version -m`)."""
    # The module text sits between two 16-byte sentinels; the second is preceded by a newline.
    if len(mod) >= 33 and mod[-17] == "\n":
        mod = mod[16:-16]
    path = module = module_version = ""
    settings, deps = {}, []
    for line in mod.splitlines():
        parts = line.split("\t")
        if parts[0] == "path" and len(parts) > 1:
            path = parts[1]
        elif parts[0] == "mod" and len(parts) > 1:
            module = parts[1]
            module_version = parts[2] if len(parts) > 2 else ""
        elif parts[0] == "dep" and len(parts) > 1:
            deps.append((parts[1], parts[2] if len(parts) > 2 else ""))
        elif parts[0] == "build" and len(parts) > 1:
            key, _, value = parts[1].partition("=")
            settings[key] = _unquote(value)
    return BuildInfo(version, path, module, module_version, settings, tuple(deps))


def _unquote(value):
    # `go version -m` quotes values that contain spaces or tabs, Go-style ("-s -w" -> "\"-s -w\"").
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value
