"""Media settings: read from Django settings, with defaults that work out of the box.

Every value can be set in ``admin_backend/settings.py`` (or from the environment
there); nothing here reads the environment itself.

``MEDIA_RENDITIONS``
    ``{name: {"size": px, "format": "JPEG" | "WEBP" | "PNG", "quality": 1-100}}``.
    ``size`` bounds the longer side; images are never enlarged. Names become file
    names (``<name>.<ext>``), so they are lowercase letters, digits, ``_`` and ``-``.
``MEDIA_UPLOAD_MAX_BYTES``
    Largest accepted upload (default 20 MiB).
``MEDIA_UPLOAD_MAX_PIXELS``
    Largest accepted width x height (default 50 million), every frame of an
    animation counted (frames x width x height): the decompression-bomb limit,
    checked from the headers before any pixel is decoded.
``MEDIA_ORIGINALS_STORAGE`` / ``MEDIA_RENDITIONS_STORAGE``
    Aliases in Django's ``STORAGES`` (default ``"default"``). Originals keep the
    uploader's metadata (GPS, camera): give them a storage that is not public.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import Storage, storages

DEFAULT_RENDITIONS: dict[str, dict[str, object]] = {
    "thumbnail": {"size": 150, "format": "JPEG", "quality": 85},
    "medium": {"size": 800, "format": "JPEG", "quality": 85},
    # The same picture as "medium" in WebP: about a third smaller for browsers that take it.
    "webp": {"size": 800, "format": "WEBP", "quality": 80},
}
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000

# Formats accepted as input, as Pillow names them, with the file extensions that may carry them.
INPUT_FORMATS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png",),
    "WEBP": (".webp",),
    "GIF": (".gif",),
}
OUTPUT_EXTENSIONS = {"JPEG": ".jpg", "WEBP": ".webp", "PNG": ".png"}

ORIGINALS_PREFIX = "uploads/originals"
RENDITIONS_PREFIX = "uploads/renditions"

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")


@dataclass(frozen=True)
class RenditionSpec:
    name: str
    size: int
    format: str
    quality: int

    @property
    def extension(self) -> str:
        return OUTPUT_EXTENSIONS[self.format]

    @property
    def filename(self) -> str:
        return f"{self.name}{self.extension}"


def _parse_rendition(name: object, value: object) -> RenditionSpec:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ImproperlyConfigured(
            f"MEDIA_RENDITIONS: name {name!r} must be 1-50 lowercase letters, digits, _ or -"
        )
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"MEDIA_RENDITIONS[{name!r}] must be a dict, got {value!r}")
    unknown = set(value) - {"size", "format", "quality"}
    if unknown:
        raise ImproperlyConfigured(f"MEDIA_RENDITIONS[{name!r}]: unknown keys {sorted(unknown)}")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 10_000:
        raise ImproperlyConfigured(
            f"MEDIA_RENDITIONS[{name!r}]['size'] must be an integer from 1 to 10000, got {size!r}"
        )
    fmt = str(value.get("format", "JPEG")).upper()
    if fmt not in OUTPUT_EXTENSIONS:
        raise ImproperlyConfigured(
            f"MEDIA_RENDITIONS[{name!r}]['format'] must be one of "
            f"{', '.join(OUTPUT_EXTENSIONS)}, got {value.get('format')!r}"
        )
    quality = value.get("quality", 85)
    if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise ImproperlyConfigured(
            f"MEDIA_RENDITIONS[{name!r}]['quality'] must be an integer from 1 to 100, "
            f"got {quality!r}"
        )
    return RenditionSpec(name=name, size=size, format=fmt, quality=quality)


def renditions() -> tuple[RenditionSpec, ...]:
    """The configured renditions, largest first (smaller ones are made from larger ones)."""
    configured = getattr(settings, "MEDIA_RENDITIONS", DEFAULT_RENDITIONS)
    if not isinstance(configured, dict) or not configured:
        raise ImproperlyConfigured("MEDIA_RENDITIONS must be a non-empty dict of renditions")
    specs = [_parse_rendition(name, value) for name, value in configured.items()]
    return tuple(sorted(specs, key=lambda spec: (-spec.size, spec.name)))


def _positive_int(name: str, default: int) -> int:
    value = getattr(settings, name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ImproperlyConfigured(f"{name} must be a positive integer, got {value!r}")
    return value


def max_upload_bytes() -> int:
    return _positive_int("MEDIA_UPLOAD_MAX_BYTES", DEFAULT_MAX_BYTES)


def max_pixels() -> int:
    return _positive_int("MEDIA_UPLOAD_MAX_PIXELS", DEFAULT_MAX_PIXELS)


def originals_storage() -> Storage:
    return storages[getattr(settings, "MEDIA_ORIGINALS_STORAGE", "default")]


def renditions_storage() -> Storage:
    return storages[getattr(settings, "MEDIA_RENDITIONS_STORAGE", "default")]


def problems() -> list[str]:
    """Configuration errors, for the system check (``manage.py check``, worker start)."""
    found = []
    for check in (renditions, max_upload_bytes, max_pixels, originals_storage, renditions_storage):
        try:
            check()
        except ImproperlyConfigured as exc:
            found.append(str(exc))
        except Exception as exc:  # an unknown storage alias raises InvalidStorageError
            found.append(f"{check.__name__}: {exc}")
    return found
