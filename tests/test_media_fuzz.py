"""Damaged images: whatever the bytes, rendering accepts the image or rejects it with a reason.

Any other exception would fail a task as "failed" (or, worse, retry it) for what
is really a bad file. Mutations are seeded, so a failure names its reproduction.
"""

from __future__ import annotations

import random

import pytest
from PIL import Image

from media import services, testing

MUTATIONS_PER_FORMAT = 150


def _base_images() -> dict[str, bytes]:
    picture = testing.halves((96, 64))
    exif = testing.camera_exif(6)
    palette = Image.new("P", (96, 64), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.paste(1, (10, 10, 50, 50))
    return {
        "photo.jpg": testing.encode(picture, "JPEG", exif=exif, quality=80),
        "progressive.jpg": testing.encode(picture, "JPEG", progressive=True),
        "picture.png": testing.encode(picture.convert("RGBA"), "PNG", exif=exif),
        "picture.webp": testing.encode(picture, "WEBP", exif=exif),
        "logo.gif": testing.encode(palette, "GIF", transparency=0),
        # Animations: damaged frame headers reach the frame count (n_frames) too.
        "animated.gif": testing.animation("GIF", ["red", "lime", "blue"], (48, 32)),
        "animated.png": testing.animation("PNG", ["red", "lime", "blue"], (48, 32)),
        "animated.webp": testing.animation("WEBP", ["red", "lime", "blue"], (48, 32)),
    }


def _mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.choice(["flip", "truncate", "insert", "repeat"])
    buffer = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(8, len(buffer))  # keep the signature: go past sniffing
            buffer[position] = rng.randrange(256)
    elif kind == "truncate":
        del buffer[rng.randrange(8, len(buffer)) :]
    elif kind == "insert":
        position = rng.randrange(8, len(buffer))
        buffer[position:position] = rng.randbytes(rng.randint(1, 64))
    else:
        start = rng.randrange(8, len(buffer) - 1)
        end = rng.randrange(start + 1, min(len(buffer), start + 64) + 1)
        buffer[end:end] = buffer[start:end] * rng.randint(2, 50)
    return bytes(buffer)


@pytest.mark.parametrize("name", list(_base_images()))
def test_damaged_images_are_accepted_or_rejected_never_an_error(name):
    original = _base_images()[name]
    assert services.render(original, name).renditions  # the undamaged file renders
    outcomes = {"accepted": 0, "rejected": 0}
    for seed in range(MUTATIONS_PER_FORMAT):
        data = _mutate(original, random.Random(f"{name}-{seed}"))
        try:
            result = services.render(data, name)
        except services.Rejected as exc:
            assert str(exc), seed
            outcomes["rejected"] += 1
        except Exception as exc:
            pytest.fail(f"{name} mutation seed {seed}: {type(exc).__name__}: {exc}")
        else:
            assert all(item.data for item in result.renditions)
            outcomes["accepted"] += 1
    assert outcomes["rejected"] > 0  # the mutations do reach the decoder


def test_random_bytes_are_rejected():
    rng = random.Random(7)
    for _ in range(200):
        data = rng.randbytes(rng.randint(0, 2048))
        with pytest.raises(services.Rejected):
            services.render(data, "noise.png")
