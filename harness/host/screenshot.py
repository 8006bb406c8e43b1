"""PPM (what QEMU's screendump gives) to PNG (what browsers and reports show), stdlib only."""

from __future__ import annotations

import struct
import zlib

from harness.errors import InfrastructureError


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def ppm_to_png(ppm: bytes) -> bytes:
    """Convert a binary P6 PPM with maxval 255 to an RGB PNG."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while ppm[pos:pos + 1].isspace():
            pos += 1
        if ppm[pos:pos + 1] == b"#":
            pos = ppm.index(b"\n", pos) + 1
            continue
        end = pos
        while not ppm[end:end + 1].isspace():
            end += 1
        fields.append(ppm[pos:end])
        pos = end
    pos += 1  # the single whitespace byte before the raster
    magic, width_s, height_s, maxval = fields
    if magic != b"P6" or maxval != b"255":
        raise InfrastructureError(f"unexpected screendump format {magic!r}/{maxval!r}",
                                  "report this with the QEMU version")
    width, height = int(width_s), int(height_s)
    stride = width * 3
    raster = ppm[pos:pos + stride * height]
    rows = b"".join(b"\x00" + raster[y * stride:(y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows, 6)) + _png_chunk(b"IEND", b""))
