"""Image inspection: identify an image by its bytes, never by its name."""

from __future__ import annotations

from django.core.files.storage import default_storage
from PIL import Image, UnidentifiedImageError

from taskcore.base import PermanentError

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF"}
MAX_PIXELS = 50_000_000


def inspect_image(storage_name: str) -> dict:
    """Return format and size of a stored image; refuse what is not an allowed image."""
    if not default_storage.exists(storage_name):
        raise PermanentError(f"no stored file named {storage_name!r}")
    with default_storage.open(storage_name, "rb") as handle:
        try:
            with Image.open(handle) as image:
                if image.format not in ALLOWED_FORMATS:
                    raise PermanentError(f"{storage_name}: format {image.format} is not allowed")
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise PermanentError(
                        f"{storage_name}: {width}x{height} exceeds {MAX_PIXELS} pixels"
                    )
                image.verify()  # reads the whole file: truncation is caught here
                return {"format": image.format, "width": width, "height": height}
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise PermanentError(f"{storage_name}: not a readable image ({exc})") from None
