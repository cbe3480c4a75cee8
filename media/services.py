"""Uploaded images: store, validate by content, clean, and render; no Celery in here.

The pipeline for one upload (``process_upload``):

1. read the original from storage (size limit first, before a byte is read);
2. ``render``: identify the format from the bytes (JPEG, PNG, WebP, GIF only),
   check that the file name's extension agrees, check the pixel count from the
   header (decompression bombs), decode (JPEG in draft mode, straight at the
   scale the largest rendition needs; truncation and corruption surface here),
   convert to 8-bit sRGB, apply the EXIF orientation, and encode every
   rendition in memory, with no metadata at all;
3. write each rendition under its deterministic name (``<upload key>/<rendition>.<ext>``),
   through a temporary file and an atomic rename, so a rerun overwrites and a
   reader never sees half a file;
4. record the result. On any failure the renditions and temporary files are
   removed; a rejected upload loses its original too.

Rejection (``Rejected``) is a verdict on the file, not an error of the system:
the upload records the reason and the task succeeds. Anything else propagates
to the task, which retries transient errors and marks the upload failed otherwise.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import tempfile
import time
import warnings
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta

from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, Storage
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from PIL import Image, ImageCms, UnidentifiedImageError

from taskcore.base import PermanentError
from taskcore.queues import queue_table

from . import conf
from .models import Rendition, Upload

logger = logging.getLogger(__name__)

FORMAT_LABELS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF"}
ALLOWED_LABEL = "JPEG, PNG, WebP or GIF"
TEMP_PREFIX = ".tmp-"
EXIF_ORIENTATION = 0x0112
# How to turn the stored pixels for each EXIF orientation (as ImageOps.exif_transpose).
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Orientations 5-8 turn the picture a quarter: width and height swap on display.
QUARTER_TURNS = {5, 6, 7, 8}
# Errors Pillow raises on a corrupt or truncated file while parsing or decoding
# (struct.error: a frame header cut short, met while counting a GIF's frames).
DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
)
_CLAIMED_EXTENSION = re.compile(r"^\.[a-z][a-z0-9]{0,7}$")


class Rejected(PermanentError):
    """The file is not an acceptable image. The message is shown to the uploader."""


# --- identification ----------------------------------------------------------


def sniff_format(head: bytes) -> str | None:
    """The allowed image format the leading bytes announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def describe_content(head: bytes) -> str:
    """What a file that is not an allowed image looks like, for the rejection reason."""
    if not head:
        return "empty"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml", b"<!doctype svg")) and b"<svg" in text[:4096]:
        return "an SVG document"
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML document"
    if text.startswith(b"<?xml"):
        return "an XML document"
    signatures = {
        b"%PDF-": "a PDF document",
        b"PK\x03\x04": "a ZIP archive",
        b"BM": "a BMP image",
        b"II*\x00": "a TIFF image",
        b"MM\x00*": "a TIFF image",
        b"\x00\x00\x01\x00": "an ICO image",
        b"\x7fELF": "an executable",
        b"MZ": "an executable",
    }
    for signature, label in signatures.items():
        if head.startswith(signature):
            return label
    if head[4:8] == b"ftyp":
        return "an HEIF/AVIF/MP4 file"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the end of the sample.
        try:
            decoded = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            decoded = None
    if decoded is not None and all(ch.isprintable() or ch in "\t\r\n\f" for ch in decoded):
        return "plain text"
    return "unrecognised binary data"


def foreign_content_reason(head: bytes) -> str:
    """The rejection reason for content that is none of the allowed formats."""
    label = describe_content(head)
    reason = f"the content is {label}, not a {ALLOWED_LABEL} image"
    if label == "an SVG document":
        reason += " (SVG can carry scripts and is never accepted)"
    return reason


def check_extension(original_name: str, fmt: str) -> None:
    """Refuse a file whose name claims a type its content is not.

    No extension, or a numeric one ("scan 2024.01.02"), claims nothing.
    """
    extension = os.path.splitext(original_name)[1].lower()
    if not extension or not _CLAIMED_EXTENSION.match(extension):
        return
    if extension not in conf.INPUT_FORMATS[fmt]:
        raise Rejected(
            f"the file name ends in {extension} but the content is a {FORMAT_LABELS[fmt]} image: "
            f"a file whose extension and content disagree is refused"
        )


def _fit(size: tuple[int, int], bound: int) -> tuple[int, int]:
    """``size`` scaled so its longer side is at most ``bound``; never enlarged."""
    width, height = size
    longest = max(width, height)
    if longest <= bound:
        return size
    scale = bound / longest
    return max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))


# --- rendering ---------------------------------------------------------------


@dataclass(frozen=True)
class RenderedImage:
    spec: conf.RenditionSpec
    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class RenderResult:
    format: str
    width: int  # as displayed (EXIF orientation applied)
    height: int
    renditions: tuple[RenderedImage, ...]


_SRGB = None


def _srgb_profile():
    global _SRGB
    if _SRGB is None:
        _SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _SRGB


def _open(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # Our own limit below is lower than Pillow's warning threshold; Pillow's
        # hard limit (twice that) raises DecompressionBombError before we see a size.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=[fmt])
        except Image.DecompressionBombError as exc:
            raise Rejected(f"decompression bomb refused: {exc}") from None
        except DECODE_ERRORS as exc:
            raise Rejected(f"corrupt {FORMAT_LABELS[fmt]} file: {exc}") from None
    try:
        _check_pixel_budget(image, fmt, max_pixels)
    except BaseException:
        image.close()
        raise
    return image


def _frame_count(image: Image.Image, fmt: str) -> int:
    """The frames the file declares, from headers only.

    Pillow counts GIF frames by skipping over each frame's data blocks, and reads
    APNG's count from its acTL chunk and WebP's from the animation header: no
    frame is decoded, so a bomb is refused before it costs memory or time.
    """
    try:
        return max(1, int(getattr(image, "n_frames", 1)))
    except DECODE_ERRORS as exc:
        raise Rejected(f"corrupt {FORMAT_LABELS[fmt]} file: {exc}") from None


def _check_pixel_budget(image: Image.Image, fmt: str, max_pixels: int) -> None:
    """Refuse an image whose pixels, every frame counted, exceed ``max_pixels``.

    Each frame of an animation is decoded onto a canvas of the full image size,
    so many small-looking frames cost as much as one huge image.
    """
    width, height = image.size
    if width * height > max_pixels:
        raise Rejected(
            f"decompression bomb refused: {width}x{height} is {width * height:,} pixels, "
            f"the limit is {max_pixels:,}"
        )
    frames = _frame_count(image, fmt)
    total = frames * width * height
    if total > max_pixels:
        raise Rejected(
            f"decompression bomb refused: animated {FORMAT_LABELS[fmt]} of {frames:,} frames "
            f"of {width}x{height} is {total:,} pixels in all (every frame counts), "
            f"the limit is {max_pixels:,}"
        )


def _orientation(image: Image.Image) -> int:
    try:
        with warnings.catch_warnings():  # a damaged EXIF block warns per bad tag
            warnings.simplefilter("ignore")
            value = image.getexif().get(EXIF_ORIENTATION, 1)
    except DECODE_ERRORS:  # a broken EXIF block only costs us the orientation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _decode(image: Image.Image, fmt: str) -> None:
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise Rejected(f"decompression bomb refused: {exc}") from None
    except DECODE_ERRORS as exc:
        raise Rejected(f"truncated or corrupt {FORMAT_LABELS[fmt]} file: {exc}") from None


def _base_size(raw_size: tuple[int, int], orientation: int, bound: int) -> tuple[int, int]:
    """The stored-orientation size of the largest rendition."""
    if orientation in QUARTER_TURNS:
        width, height = _fit((raw_size[1], raw_size[0]), bound)
        return height, width
    return _fit(raw_size, bound)


def _to_8bit(image: Image.Image) -> Image.Image:
    """A mode that resizes well and that ImageCms knows: L, LA, RGB, RGBA or CMYK."""
    mode = image.mode
    if mode in ("L", "RGB") and "transparency" in image.info:
        return image.convert("RGBA" if mode == "RGB" else "LA")
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return image
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    if mode.startswith("I;16") or mode == "I":  # 16-bit grey PNG: keep the top 8 bits
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if mode == "1":
        return image.convert("L")
    return image.convert("RGBA" if "A" in mode else "RGB")


def _to_srgb(image: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """8-bit RGB or RGBA in sRGB. An embedded profile is honoured; a broken one is ignored."""
    has_alpha = image.mode in ("LA", "RGBA")
    target_mode = "RGBA" if has_alpha else "RGB"
    if icc_profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            if image.mode == "LA":
                image = image.convert("RGBA")
            return ImageCms.profileToProfile(image, source, _srgb_profile(), outputMode=target_mode)
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
            logger.warning("ignoring an unusable ICC profile: %s", exc)
    return image if image.mode == target_mode else image.convert(target_mode)


def _encode(image: Image.Image, spec: conf.RenditionSpec) -> bytes:
    # Nothing of the source's info (EXIF, XMP, ICC, comments, GPS) may reach the output.
    image.info = {}
    out = io.BytesIO()
    if spec.format == "JPEG":
        if image.mode == "RGBA":
            flat = Image.new("RGB", image.size, (255, 255, 255))
            flat.paste(image, mask=image.getchannel("A"))
            image = flat
        image.save(out, "JPEG", quality=spec.quality, optimize=True)
    elif spec.format == "WEBP":
        image.save(out, "WEBP", quality=spec.quality, method=4)
    else:
        image.save(out, "PNG", optimize=False)
    return out.getvalue()


def render(
    data: bytes,
    original_name: str,
    specs: Iterable[conf.RenditionSpec] | None = None,
    *,
    max_pixels: int | None = None,
) -> RenderResult:
    """Validate ``data`` by content and encode every rendition in memory.

    Raises ``Rejected`` with a reason a person can act on for anything that is
    not an acceptable image. Writes nothing.
    """
    # Pillow warns about every oddity of a damaged file (bad EXIF tags, ...); what
    # matters is whether the image decodes, and that is an error or a result.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _render(data, original_name, specs, max_pixels)


def _render(data, original_name, specs, max_pixels) -> RenderResult:
    specs = tuple(sorted(specs or conf.renditions(), key=lambda spec: -spec.size))
    max_pixels = max_pixels or conf.max_pixels()
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise Rejected(foreign_content_reason(data[:4096]))
    check_extension(original_name, fmt)

    image = _open(data, fmt, max_pixels)
    with image:
        raw_size = image.size
        box = None
        if fmt == "JPEG":
            # JPEG carries EXIF in its header: the orientation is known before decoding,
            # so decode straight at 1/2, 1/4 or 1/8 scale (the costliest step shrinks).
            orientation = _orientation(image)
            base_raw = _base_size(raw_size, orientation, specs[0].size)
            if base_raw != raw_size:
                drafted = image.draft(image.mode, base_raw)
                box = drafted[1] if drafted else None
            _decode(image, fmt)
        else:
            # Decode first: reading EXIF from PNG or WebP may decode, and a decoding
            # error must never be taken for "no orientation".
            _decode(image, fmt)
            orientation = _orientation(image)
            base_raw = _base_size(raw_size, orientation, specs[0].size)
        turned = orientation in QUARTER_TURNS
        display_size = (raw_size[1], raw_size[0]) if turned else raw_size
        icc_profile = image.info.get("icc_profile")

        working = _to_8bit(image)
        if working.size != base_raw or box is not None:
            working = working.resize(base_raw, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        working = _to_srgb(working, icc_profile)
        if orientation in ORIENTATION_TRANSPOSE:
            working = working.transpose(ORIENTATION_TRANSPOSE[orientation])
        working.info = {}

    rendered = []
    for spec in specs:
        size = _fit(display_size, spec.size)
        image = working if size == working.size else working.resize(size, Image.Resampling.LANCZOS)
        rendered.append(RenderedImage(spec, _encode(image, spec), size[0], size[1]))
    return RenderResult(fmt, display_size[0], display_size[1], tuple(rendered))


def inspect_image(storage_name: str) -> dict:
    """Format and size of a stored image, validated like an upload (by content)."""
    storage = conf.originals_storage()
    if not storage.exists(storage_name):
        raise PermanentError(f"no stored file named {storage_name!r}")
    data = _read_limited(storage, storage_name)
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise Rejected(foreign_content_reason(data[:4096]))
    check_extension(storage_name, fmt)
    with _open(data, fmt, conf.max_pixels()) as image:
        _decode(image, fmt)
        return {"format": fmt, "width": image.width, "height": image.height}


# --- storage -------------------------------------------------------------------


def _read_limited(storage: Storage, name: str) -> bytes:
    limit = conf.max_upload_bytes()
    size = storage.size(name)
    if size > limit:
        raise Rejected(f"the file is {_megabytes(size)}; the limit is {_megabytes(limit)}")
    with storage.open(name, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:  # the storage reported less than it holds
        raise Rejected(f"the file is larger than the limit of {_megabytes(limit)}")
    if not data:
        raise Rejected("the file is empty")
    return data


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _local_path(storage: Storage, name: str) -> str | None:
    """The file's path when the storage is a local filesystem, else None.

    ``path()`` alone is no proof: InMemoryStorage answers it too.
    """
    if not isinstance(storage, FileSystemStorage):
        return None
    return storage.path(name)


def write_atomically(storage: Storage, name: str, data: bytes) -> None:
    """Store ``data`` under exactly ``name``, replacing what is there.

    On a local filesystem: a temporary file in the same directory, renamed over
    the target, so the target is always either the old or the new file, whole.
    Elsewhere (object stores), a single PUT is already all-or-nothing.
    """
    path = _local_path(storage, name)
    if path is None:
        if storage.exists(name):
            storage.delete(name)
        saved = storage.save(name, ContentFile(data))
        if saved != name:  # another run wrote it between our delete and save
            storage.delete(saved)
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(
        dir=directory, prefix=f"{TEMP_PREFIX}{os.path.basename(path)}."
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        mode = getattr(storage, "file_permissions_mode", None) or 0o644
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:  # SoftTimeLimitExceeded included: leave nothing behind
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _listdir_files(storage: Storage, directory: str) -> list[str]:
    try:
        return storage.listdir(directory)[1]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _hard_time_limit() -> int:
    return queue_table().spec_for_task("media.tasks.process_upload").time_limit


def remove_stale_temporaries(upload: Upload) -> int:
    """Delete temporary files a killed run left (older than the hard time limit)."""
    storage = conf.renditions_storage()
    cutoff = timezone.now() - timedelta(seconds=_hard_time_limit())
    removed = 0
    for filename in _listdir_files(storage, upload.renditions_dir):
        name = f"{upload.renditions_dir}/{filename}"
        if filename.startswith(TEMP_PREFIX) and storage.get_modified_time(name) < cutoff:
            storage.delete(name)
            removed += 1
    return removed


def remove_renditions(upload: Upload, keep: Iterable[str] = ()) -> None:
    """Delete rendition files (and finished runs' temporaries) not in ``keep``, and their rows."""
    storage = conf.renditions_storage()
    keep = set(keep)
    for filename in _listdir_files(storage, upload.renditions_dir):
        if filename not in keep and not filename.startswith(TEMP_PREFIX):
            storage.delete(f"{upload.renditions_dir}/{filename}")
    rows = Rendition.objects.filter(upload=upload)
    if keep:
        rows = rows.exclude(file__in=[f"{upload.renditions_dir}/{name}" for name in keep])
    rows.delete()
    if not keep:
        path = _local_path(storage, upload.renditions_dir)
        if path:
            with suppress(OSError):  # only when empty
                os.rmdir(path)


def delete_upload_files(original_name: str, renditions_dir: str) -> None:
    """Remove an upload's files (after its row is deleted)."""
    if original_name:
        conf.originals_storage().delete(original_name)
    storage = conf.renditions_storage()
    for filename in _listdir_files(storage, renditions_dir):
        storage.delete(f"{renditions_dir}/{filename}")
    path = _local_path(storage, renditions_dir)
    if path:
        with suppress(OSError):
            os.rmdir(path)


# --- uploads ---------------------------------------------------------------------


def display_name(name: str) -> str:
    """The uploader's file name without any path, control characters, or excess length."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:255] or "unnamed"


def _send_after_commit(upload: Upload) -> None:
    """Queue processing through the outbox: after commit, and kept across a broker outage.

    The outbox row's id is the task id; the upload records it.
    """
    from taskcore.outbox import send_after_commit

    from .tasks import process_upload as process_upload_task

    message = send_after_commit(process_upload_task, [upload.pk])
    upload.task_id = str(message.pk)
    Upload.objects.filter(pk=upload.pk).update(task_id=upload.task_id)


def store_upload(upload: Upload) -> Upload:
    """Save a new upload whose ``file`` is attached but not yet stored; process after commit.

    The file is stored under a generated name (see ``models.original_upload_to``).
    The processing task is sent only once the surrounding transaction commits, so a
    worker never looks for a row that does not exist yet, and a rollback sends
    nothing; when the broker is down at that moment, taskcore's outbox relay sends
    it once the broker is back.
    """
    upload.original_name = display_name(upload.original_name or upload.file.name)
    upload.size_bytes = upload.file.size
    upload.status = Upload.Status.PENDING
    with transaction.atomic():
        try:
            upload.save()
            _send_after_commit(upload)
        except BaseException:
            if upload.file.name and upload.file._committed:
                upload.file.storage.delete(upload.file.name)
            raise
    return upload


def create_upload(file: File, *, original_name: str | None = None, uploaded_by=None) -> Upload:
    """Store ``file`` as a new upload and queue its processing after commit."""
    upload = Upload(original_name=original_name or file.name or "", uploaded_by=uploaded_by)
    upload.file = file
    return store_upload(upload)


class CannotReprocess(Exception):
    pass


def request_reprocess(upload_id: int) -> Upload:
    """Queue an upload for processing again (after commit); renditions are overwritten.

    Refused for a rejected upload (its file is gone) and for one already queued
    or running, unless it has been so for longer than the hard time limit (its
    worker died or its message was lost).
    """
    with transaction.atomic():
        upload = Upload.objects.select_for_update().get(pk=upload_id)
        if upload.status == Upload.Status.REJECTED or not upload.file:
            raise CannotReprocess(f"{upload.original_name}: rejected, its file was deleted")
        busy = upload.status in (Upload.Status.PENDING, Upload.Status.PROCESSING)
        stale_before = timezone.now() - timedelta(seconds=_hard_time_limit())
        if busy and upload.updated_at > stale_before:
            raise CannotReprocess(f"{upload.original_name}: already {upload.status}")
        upload.status = Upload.Status.PENDING
        upload.reason = ""
        upload.save(update_fields=["status", "reason", "updated_at"])
        _send_after_commit(upload)
    return upload


def _set_status(upload_id: int, status: str, reason: str = "", **fields) -> None:
    Upload.objects.filter(pk=upload_id).update(
        status=status, reason=reason[:2000], updated_at=timezone.now(), **fields
    )


def process_upload(upload_id: int) -> dict:
    """Validate and render one upload; see the module docstring. Returns the outcome."""
    try:
        upload = Upload.objects.get(pk=upload_id)
    except Upload.DoesNotExist:
        raise PermanentError(f"no upload with id {upload_id}") from None
    if upload.status == Upload.Status.REJECTED:  # a duplicate delivery: the verdict stands
        return {"upload": upload_id, "status": upload.status, "reason": upload.reason}
    if not upload.file:
        raise PermanentError(f"upload {upload_id} has no stored file to process")
    _set_status(upload_id, Upload.Status.PROCESSING, attempts=F("attempts") + 1)
    started = time.perf_counter()
    remove_stale_temporaries(upload)
    try:
        data = _read_limited(upload.file.storage, upload.file.name)
        result = render(data, upload.original_name)
        del data
        storage = conf.renditions_storage()
        names = []
        for item in result.renditions:
            name = f"{upload.renditions_dir}/{item.spec.filename}"
            write_atomically(storage, name, item.data)
            names.append(name)
        with transaction.atomic():
            for item, name in zip(result.renditions, names, strict=True):
                Rendition.objects.update_or_create(
                    upload=upload,
                    name=item.spec.name,
                    defaults={
                        "file": name,
                        "format": item.spec.format,
                        "width": item.width,
                        "height": item.height,
                        "size_bytes": len(item.data),
                    },
                )
            remove_renditions(upload, keep=[item.spec.filename for item in result.renditions])
            _set_status(
                upload_id,
                Upload.Status.READY,
                detected_format=result.format,
                width=result.width,
                height=result.height,
                processed_at=timezone.now(),
            )
    except Rejected as exc:
        _reject(upload, str(exc))
        logger.info("upload %s rejected: %s", upload_id, exc)
        return {"upload": upload_id, "status": Upload.Status.REJECTED.value, "reason": str(exc)}
    except BaseException:
        # Time limit, storage or database error: no rendition survives a failed run.
        with suppress(Exception):
            remove_renditions(upload)
        raise
    seconds = time.perf_counter() - started
    logger.info("upload %s ready: %d renditions in %.3fs", upload_id, len(names), seconds)
    return {
        "upload": upload_id,
        "status": Upload.Status.READY.value,
        "format": result.format,
        "width": result.width,
        "height": result.height,
        "renditions": {item.spec.name: [item.width, item.height] for item in result.renditions},
    }


def _reject(upload: Upload, reason: str) -> None:
    """A rejected upload keeps its record and reason, and no file at all."""
    remove_renditions(upload)
    if upload.file.name:
        upload.file.storage.delete(upload.file.name)
    _set_status(upload.pk, Upload.Status.REJECTED, reason, file="")


def mark_retrying(upload_id: int, reason: str) -> None:
    _set_status(upload_id, Upload.Status.PENDING, f"retrying: {reason}")


def mark_failed(upload_id: int, reason: str) -> None:
    """Processing failed for good (not the file's fault): keep the original for a reprocess."""
    Upload.objects.filter(pk=upload_id).exclude(status=Upload.Status.REJECTED).update(
        status=Upload.Status.FAILED, reason=reason[:2000], updated_at=timezone.now()
    )


def fail_stale_uploads() -> int:
    """Mark uploads processing for longer than the hard time limit as failed.

    A run killed at the hard time limit (or with its worker) cannot record its own
    end; this is for a periodic (beat) job. Returns how many were marked.
    """
    cutoff = timezone.now() - timedelta(seconds=2 * _hard_time_limit())
    return Upload.objects.filter(status=Upload.Status.PROCESSING, updated_at__lt=cutoff).update(
        status=Upload.Status.FAILED,
        reason="processing stopped without a result (worker killed or hard time limit)",
        updated_at=timezone.now(),
    )
