"""Write RAR 4 archives of stored (uncompressed) files: enough for tests, and no rar binary needed."""

import struct
import zlib

DOS_TIME = (((2013 - 1980) << 9) | (10 << 5) | 1) << 16  # 2013-10-01 00:00, when HMDB-51 was packed


def _block(head_type: int, flags: int, body: bytes) -> bytes:
    header = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header


def write_rar(path, files: dict) -> None:
    """``files``: archive name ('dir/file.avi') -> bytes, stored in a RAR4 archive at ``path``."""
    out = bytearray(b"Rar!\x1a\x07\x00")
    out += _block(0x73, 0, b"\x00" * 6)
    for name, data in files.items():
        encoded = name.replace("/", "\\").encode()
        body = struct.pack("<IIBIIBBHI", len(data), len(data), 0, zlib.crc32(data), DOS_TIME, 20, 0x30,
                           len(encoded), 0x20) + encoded
        out += _block(0x74, 0x8000, body) + data
    out += _block(0x7B, 0x4000, b"")
    with open(path, "wb") as f:
        f.write(out)
