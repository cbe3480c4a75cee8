"""Images made on the spot for tests and the benchmark: no binary fixtures in the repository.

Each factory returns the encoded bytes. ``CAMERA`` and ``GPS_LATITUDE`` are
planted in the metadata so a test can look for them in every output.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator, Sequence

from PIL import Image

CAMERA = "AcmeCam X100 SN-4242"
GPS_LATITUDE = (52.0, 31.0, 12.34)
XMP_WITH_GPS = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" '
    b'exif:GPSLatitude="52,31.2N" exif:GPSLongitude="13,24.1E"/></rdf:RDF></x:xmpmeta>'
)


def camera_exif(orientation: int | None = None) -> Image.Exif:
    """EXIF with a camera make/model, a serial number and a GPS position."""
    exif = Image.Exif()
    exif[0x010F] = CAMERA  # Make
    exif[0x0110] = "Model 7"  # Model
    if orientation:
        exif[0x0112] = orientation
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"  # GPSLatitudeRef
    gps[2] = GPS_LATITUDE  # GPSLatitude
    gps[3] = "E"
    gps[4] = (13.0, 24.0, 1.0)
    return exif


def halves(size: tuple[int, int], first="red", second="blue", mode="RGB") -> Image.Image:
    """Left half ``first``, right half ``second``: orientation is visible in any rendition."""
    image = Image.new(mode, size, second)
    image.paste(first, (0, 0, size[0] // 2, size[1]))
    return image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def photo_jpeg(
    size: tuple[int, int] = (4000, 3000), *, seed: int = 0, quality: int = 90, **params
) -> bytes:
    """A photo-like JPEG (gradients and grain: compresses like a photo, not like a flat fill)."""
    grain = Image.effect_noise(size, 24 + seed % 16)
    ramp = Image.linear_gradient("L").resize(size)
    radial = Image.radial_gradient("L").resize(size)
    channels = [ramp, radial, ramp.transpose(Image.Transpose.ROTATE_180)]
    channels = channels[seed % 3 :] + channels[: seed % 3]
    image = Image.merge("RGB", [Image.blend(channel, grain, 0.35) for channel in channels])
    return encode(image, "JPEG", quality=quality, **params)


def decompression_bomb_png(side: int = 30_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels in about 100 KB: it inflates to ``side**2`` px."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


# --- ICC profiles --------------------------------------------------------------

# sRGB's primaries adapted to D50, as ICC profiles store them.
SRGB_RED = (0.4361, 0.2225, 0.0139)
SRGB_GREEN = (0.3851, 0.7169, 0.0971)
SRGB_BLUE = (0.1431, 0.0606, 0.7141)


def rgb_icc_profile(
    red=SRGB_GREEN, green=SRGB_RED, blue=SRGB_BLUE, *, gamma=2.2, name="Swapped primaries"
) -> bytes:
    """A minimal ICC v2 RGB matrix/TRC display profile.

    The default swaps red and green: a pixel (255, 0, 0) in this space is pure
    green in sRGB, so a converted rendition shows whether the profile was honoured.
    """

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(values) -> bytes:
        return b"XYZ " + b"\0" * 4 + b"".join(s15(v) for v in values)

    def curve() -> bytes:
        return b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"

    def description(text: str) -> bytes:
        ascii_text = text.encode("ascii") + b"\0"
        return (
            b"desc"
            + b"\0" * 4
            + struct.pack(">I", len(ascii_text))
            + ascii_text
            + struct.pack(">IIHB", 0, 0, 0, 0)
            + b"\0" * 67
        )

    tags = [
        (b"desc", description(name)),
        (b"cprt", b"text" + b"\0" * 4 + b"none\0"),
        (b"wtpt", xyz((0.9642, 1.0, 0.8249))),
        (b"rXYZ", xyz(red)),
        (b"gXYZ", xyz(green)),
        (b"bXYZ", xyz(blue)),
        (b"rTRC", curve()),
        (b"gTRC", curve()),
        (b"bTRC", curve()),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (
        struct.pack(">I", offset + len(data))
        + b"\0" * 4
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + b"\0" * 28
        + s15(0.9642)
        + s15(1.0)
        + s15(0.8249)
        + b"\0" * 48
    )
    return header + struct.pack(">I", len(tags)) + table + data


# --- animations ------------------------------------------------------------------


def animation(fmt: str, colours: Sequence[str], size: tuple[int, int] = (64, 48)) -> bytes:
    """An animated GIF, PNG (APNG) or WebP with one plain frame per colour, in order."""
    frames = [Image.new("RGB", size, colour) for colour in colours]
    params = {"lossless": True} if fmt == "WEBP" else {}
    return encode(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params
    )


def many_frames(fmt: str, frames: int, size: tuple[int, int] = (1000, 1000)) -> bytes:
    """An animation of ``frames`` frames of ``size`` pixels in a file of a few KB.

    Each frame differs from the one before in one pixel, so the encoder stores
    it as a tiny sub-rectangle; a decoder still paints every frame on the full
    canvas. Each frame alone can be far under a pixel limit that all together
    exceed (the animated decompression bomb).
    """
    params: dict = {"save_all": True, "duration": 40}
    if fmt == "WEBP":  # WebP takes no palette: frames are made one at a time
        sequence = _one_pixel_changes("RGB", frames, size)
        params.update(lossless=True, method=0, append_images=sequence)
    else:  # APNG needs a list; a palette keeps it to one byte per pixel
        sequence = list(_one_pixel_changes("P", frames, size))
        params.update(append_images=sequence[1:])
    return encode(next(iter(sequence)), fmt, **params)


def _one_pixel_changes(mode: str, frames: int, size: tuple[int, int]) -> Iterator[Image.Image]:
    base = Image.new(mode, size, 0)
    if mode == "P":
        base.putpalette([255, 255, 255, 255, 0, 0])
    marker = 1 if mode == "P" else (255, 0, 0)
    for index in range(frames):
        frame = base.copy()
        frame.putpixel((index % size[0], index // size[0] % size[1]), marker)
        yield frame
