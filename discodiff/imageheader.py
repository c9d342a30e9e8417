"""The size of an image, read from its header without decoding it. Torch-free.

A 100 KB PNG can claim 30000x30000 pixels (a decompression bomb): the loader reads width and height here
and refuses an image too large before OpenCV decodes it. Formats are recognised by content, as OpenCV
does; PNG (IHDR), JPEG (SOFn frame header), BMP and WebP (VP8, VP8L, VP8X) are read, anything else is
refused by the caller.
"""
from __future__ import annotations

import struct


def image_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header of a PNG, JPEG, BMP or WebP file; ValueError if the
    bytes are none of those (OpenCV decodes more formats, but these are the ones whose size is checked)."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return ("PNG", *_png_size(data))
        if data[:3] == b"\xff\xd8\xff":
            return ("JPEG", *_jpeg_size(data))
        if data[:2] == b"BM":
            return ("BMP", *_bmp_size(data))
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return ("WebP", *_webp_size(data))
    except (struct.error, IndexError):
        raise ValueError("its header is truncated") from None
    raise ValueError("it is not a PNG, JPEG, BMP or WebP file")


def _png_size(data: bytes) -> tuple[int, int]:
    if data[12:16] != b"IHDR":
        raise ValueError("its PNG header (IHDR) is missing")
    return struct.unpack(">II", data[16:24])


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the marker segments up to the frame header (SOFn: precision, height, width)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError("its JPEG markers are damaged")
        marker = data[i + 1]
        if marker == 0xFF:                              # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif marker in _JPEG_SOF:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        elif marker in (0xD9, 0xDA):                    # end of image, or scan data before any frame header
            break
        else:
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    raise ValueError("its JPEG frame header (SOF) is missing")


def _bmp_size(data: bytes) -> tuple[int, int]:
    if struct.unpack("<I", data[14:18])[0] == 12:       # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    w, h = struct.unpack("<ii", data[18:26])
    return w, abs(h)                                    # a negative height means top-down rows


def _webp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 30:
        raise ValueError("its header is truncated")
    chunk = data[12:16]
    if chunk == b"VP8X":                                # extended: 24-bit canvas size minus one
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: key-frame start code, 14-bit sizes
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:           # lossless: 14-bit sizes minus one
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ValueError("its WebP header is damaged")
