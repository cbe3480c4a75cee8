"""The media pipeline end to end: uploads processed by a real worker on the media queue.

Every image is generated here (media.testing). Each test creates uploads the way
the application does (``services.create_upload``: stored, then queued after
commit) and reads what a user would get: the rendition files themselves.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from celery.result import AsyncResult
from django.core.files.base import ContentFile
from PIL import Image

from admin_backend import queues
from media import conf, services, testing
from media.models import Rendition, Upload
from media.tasks import process_upload
from taskcore.testing.workers import WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)

RESULT_TIMEOUT = 60


@pytest.fixture(scope="module")
def media_worker(app, worker_database_url, test_work_dir):
    """One worker on the media queue for the whole module (starting one costs seconds)."""
    worker = WorkerProcess(
        app,
        ["media"],
        log_path=test_work_dir / "workers" / "test_media_pipeline.out",
        env={"DATABASE_URL": worker_database_url},
        name="media",
    )
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def media_root(settings) -> Path:
    return Path(settings.MEDIA_ROOT)


def upload(data: bytes, name: str) -> Upload:
    return services.create_upload(ContentFile(data, name=name))


def finished(upload_: Upload, app) -> dict:
    """Wait for the upload's task; return its result with the upload refreshed."""
    result = AsyncResult(upload_.task_id, app=app).get(timeout=RESULT_TIMEOUT)
    upload_.refresh_from_db()
    return result


def files_of(upload_: Upload, media_root: Path) -> list[Path]:
    """Every file under MEDIA_ROOT that belongs to the upload (its key is in the path)."""
    return sorted(p for p in media_root.rglob("*") if p.is_file() and upload_.key.hex in str(p))


def rendition_images(upload_: Upload, media_root: Path) -> dict[str, tuple[Image.Image, bytes]]:
    images = {}
    for rendition in upload_.renditions.all():
        data = (media_root / rendition.file.name).read_bytes()
        images[rendition.name] = (Image.open(io.BytesIO(data)), data)
    return images


def is_red(pixel) -> bool:
    return pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


def is_blue(pixel) -> bool:
    return pixel[0] < 60 and pixel[1] < 60 and pixel[2] > 200


def test_renditions_have_the_configured_sizes_and_the_picture_is_upright(
    media_worker, media_root, app
):
    # Stored sideways (1600x800) with EXIF orientation 6: displayed as 800x1600,
    # the stored left half (red) on top. A small landscape PNG is never enlarged.
    sideways = upload(
        testing.encode(
            testing.halves((1600, 800)), "JPEG", quality=95, exif=testing.camera_exif(6)
        ),
        "../../etc/Holiday photo.JPG",
    )
    small = upload(testing.encode(testing.halves((600, 300)), "PNG"), "small.png")

    outcome = finished(sideways, app)
    assert outcome["status"] == "ready", outcome
    assert sideways.status == Upload.Status.READY and sideways.reason == ""
    assert (sideways.width, sideways.height, sideways.detected_format) == (800, 1600, "JPEG")
    assert sideways.original_name == "Holiday photo.JPG"
    assert sideways.file.name == f"uploads/originals/{sideways.key.hex}.jpg"
    expected = {"thumbnail": (75, 150), "medium": (400, 800), "webp": (400, 800)}
    images = rendition_images(sideways, media_root)
    assert {name: image.size for name, (image, _) in images.items()} == expected
    for name, (image, _) in images.items():
        spec = next(spec for spec in conf.renditions() if spec.name == name)
        assert image.format == spec.format
        rgb = image.convert("RGB")
        assert is_red(rgb.getpixel((rgb.width // 2, 2))), name  # top
        assert is_blue(rgb.getpixel((rgb.width // 2, rgb.height - 3))), name  # bottom
        assert 0x0112 not in image.getexif()  # no orientation left to apply twice
    assert {r.name: r.file.name for r in sideways.renditions.all()} == {
        "thumbnail": f"uploads/renditions/{sideways.key.hex}/thumbnail.jpg",
        "medium": f"uploads/renditions/{sideways.key.hex}/medium.jpg",
        "webp": f"uploads/renditions/{sideways.key.hex}/webp.webp",
    }
    assert {(r.name, r.width, r.height) for r in sideways.renditions.all()} == {
        (name, *size) for name, size in expected.items()
    }

    assert finished(small, app)["status"] == "ready"
    small_sizes = {
        name: image.size for name, (image, _) in rendition_images(small, media_root).items()
    }
    assert small_sizes == {"thumbnail": (150, 75), "medium": (600, 300), "webp": (600, 300)}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_gps_and_camera_data_are_absent_from_every_output(fmt, media_worker, media_root, app):
    params = {"exif": testing.camera_exif(1)}
    if fmt == "JPEG":
        params.update(xmp=testing.XMP_WITH_GPS, comment=b"shot at home")
    data = testing.encode(testing.halves((1000, 700)), fmt, **params)
    assert testing.CAMERA.encode() in data  # planted
    item = upload(data, f"located.{fmt.lower()}")

    assert finished(item, app)["status"] == "ready"
    images = rendition_images(item, media_root)
    assert len(images) == 3
    for name, (image, raw) in images.items():
        exif = image.getexif()
        assert 0x8825 not in exif and len(exif) == 0, name  # no GPS IFD, no EXIF at all
        assert "exif" not in image.info and "xmp" not in image.info, name
        assert testing.CAMERA.encode() not in raw and b"Model 7" not in raw, name
        assert b"GPS" not in raw and b"shot at home" not in raw, name


def test_colour_is_converted_to_srgb(media_worker, media_root, app):
    # A profile with red and green swapped: pixels stored as red are green in sRGB.
    tagged = upload(
        testing.encode(
            Image.new("RGB", (400, 300), (255, 0, 0)),
            "JPEG",
            quality=95,
            icc_profile=testing.rgb_icc_profile(),
        ),
        "wide-gamut.jpg",
    )
    cmyk = upload(
        testing.encode(Image.new("CMYK", (400, 300), (255, 0, 0, 0)), "JPEG", quality=95),
        "print.jpg",
    )
    # Palette GIF: index 0 (black) is transparent, index 1 is blue.
    logo = Image.new("P", (300, 300), 0)
    logo.putpalette([0, 0, 0, 0, 0, 255])
    logo.paste(1, (100, 100, 200, 200))
    gif = upload(testing.encode(logo, "GIF", transparency=0), "logo.gif")

    assert finished(tagged, app)["status"] == "ready"
    for name, (image, _) in rendition_images(tagged, media_root).items():
        assert "icc_profile" not in image.info, name
        red, green, blue = image.convert("RGB").getpixel((10, 10))
        assert green > 200 and red < 80 and blue < 80, (name, (red, green, blue))

    assert finished(cmyk, app)["status"] == "ready"
    for name, (image, _) in rendition_images(cmyk, media_root).items():
        assert image.mode == "RGB", name
        red, green, blue = image.getpixel((10, 10))
        assert red < 80 and green > 150 and blue > 150, (name, (red, green, blue))  # cyan

    assert finished(gif, app)["status"] == "ready"
    images = rendition_images(gif, media_root)
    assert images["medium"][0].getpixel((5, 5)) == (255, 255, 255)  # JPEG: flattened on white
    assert images["webp"][0].mode == "RGBA" and images["webp"][0].getpixel((5, 5))[3] == 0


def _truncated_jpeg() -> bytes:
    data = testing.photo_jpeg((800, 600))
    return data[: len(data) * 6 // 10]


# 1000x1000 frames: one frame is a fiftieth of the default pixel limit; 51 exceed it.
BOMB_FRAMES, BOMB_SIDE = 51, 1000


def _animated_bomb(fmt: str):
    def make() -> bytes:
        frame = BOMB_SIDE * BOMB_SIDE
        assert frame < conf.max_pixels() < BOMB_FRAMES * frame  # what the case is about
        return testing.many_frames(fmt, BOMB_FRAMES, (BOMB_SIDE, BOMB_SIDE))

    return make


def _animated_bomb_reason(label: str) -> str:
    return (
        f"decompression bomb refused: animated {label} of {BOMB_FRAMES} frames of "
        f"{BOMB_SIDE}x{BOMB_SIDE} is {BOMB_FRAMES * BOMB_SIDE**2:,} pixels in all "
        "(every frame counts)"
    )


REJECTIONS = {
    "decompression bomb": (testing.decompression_bomb_png, "huge.png", "decompression bomb"),
    "animated GIF over the pixel budget": (
        _animated_bomb("GIF"),
        "party.gif",
        _animated_bomb_reason("GIF"),
    ),
    "animated PNG over the pixel budget": (
        _animated_bomb("PNG"),
        "party.png",
        _animated_bomb_reason("PNG"),
    ),
    "animated WebP over the pixel budget": (
        _animated_bomb("WEBP"),
        "party.webp",
        _animated_bomb_reason("WebP"),
    ),
    "truncated JPEG": (_truncated_jpeg, "cut.jpg", "truncated or corrupt JPEG"),
    "PNG named .jpg": (
        lambda: testing.encode(testing.halves((64, 64)), "PNG"),
        "photo.jpg",
        "ends in .jpg but the content is a PNG image",
    ),
    "text named .png": (
        lambda: b"name,email\nAda,ada@example.org\n" * 20,
        "table.png",
        "the content is plain text, not a JPEG, PNG, WebP or GIF image",
    ),
    "SVG": (
        lambda: (
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" '
            b'height="10"><script>alert(1)</script></svg>'
        ),
        "logo.svg",
        "the content is an SVG document",
    ),
    "SVG named .png": (
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="5" height="5"/></svg>',
        "logo.png",
        "SVG can carry scripts",
    ),
    "oversized file": (
        lambda: (
            testing.encode(testing.halves((64, 64)), "PNG")
            + b"\0" * (conf.max_upload_bytes() + 2**20)
        ),
        "big.png",
        "the file is 21.0 MB; the limit is 20.0 MB",
    ),
    "corrupt PNG": (
        lambda: testing.encode(testing.halves((64, 64)), "PNG")[:60] + b"\x13" * 400,
        "broken.png",
        "corrupt PNG",
    ),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_bad_files_are_rejected_with_a_reason_no_retry_and_nothing_on_disk(
    case, media_worker, media_root, app
):
    make, name, reason = REJECTIONS[case]
    item = upload(make(), name)
    assert item.file.name.startswith("uploads/originals/")  # stored before the check

    outcome = finished(item, app)

    assert outcome == {"upload": item.pk, "status": "rejected", "reason": item.reason}
    assert item.status == Upload.Status.REJECTED
    assert reason in item.reason, item.reason
    result = AsyncResult(item.task_id, app=app)
    assert result.state == "SUCCESS" and result.retries == 0
    assert item.attempts == 1  # ran once: no retry
    assert item.file.name == ""
    assert files_of(item, media_root) == []
    assert not Rendition.objects.filter(upload=item).exists()


@pytest.mark.parametrize(
    ("fmt", "name"), [("GIF", "wave.gif"), ("PNG", "wave.png"), ("WEBP", "wave.webp")]
)
def test_an_animated_image_within_the_budget_is_rendered_from_its_first_frame(
    fmt, name, media_worker, media_root, app
):
    item = upload(testing.animation(fmt, ["red", "lime", "blue"], size=(320, 240)), name)

    assert finished(item, app)["status"] == "ready", item.reason
    assert (item.width, item.height, item.detected_format) == (320, 240, fmt)
    images = rendition_images(item, media_root)
    assert len(images) == 3
    for rendition, (image, _) in images.items():
        assert getattr(image, "n_frames", 1) == 1, rendition  # a still picture
        assert is_red(image.convert("RGB").getpixel((5, 5))), rendition  # the first frame


def _snapshot(item: Upload, media_root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(media_root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in files_of(item, media_root)
    }


def test_a_rerun_overwrites_the_same_files(media_worker, media_root, app):
    item = upload(testing.photo_jpeg((1200, 900), exif=testing.camera_exif(3)), "rerun.jpg")
    assert finished(item, app)["status"] == "ready"
    before = _snapshot(item, media_root)
    rows_before = sorted(item.renditions.values_list("pk", "name", "file"))
    all_files_before = sum(1 for p in media_root.rglob("*") if p.is_file())

    services.request_reprocess(item.pk)
    item.refresh_from_db()
    assert finished(item, app)["status"] == "ready"

    assert item.attempts == 2
    assert _snapshot(item, media_root) == before  # same names, same bytes
    assert len(before) == 4  # the original and three renditions
    assert sorted(item.renditions.values_list("pk", "name", "file")) == rows_before
    assert sum(1 for p in media_root.rglob("*") if p.is_file()) == all_files_before


def test_a_soft_time_limit_leaves_no_rendition_and_no_temporary_file(media_worker, media_root, app):
    # 49 MP (under the 50 MP limit): decoding and scaling take far longer than 0.1 s.
    gradient = Image.linear_gradient("L").resize((7000, 7000))
    data = testing.encode(
        Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90), gradient)),
        "PNG",
        compress_level=1,
    )
    item = Upload(original_name="slow.png")
    item.file.save("slow.png", ContentFile(data), save=True)  # stored, not queued

    result = process_upload.apply_async((item.pk,), soft_time_limit=0.1, time_limit=60)
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=RESULT_TIMEOUT)

    item.refresh_from_db()
    assert item.status == Upload.Status.FAILED
    assert "longer than the time limit (0.1 s)" in item.reason
    assert files_of(item, media_root) == [media_root / item.file.name]  # the original only
    assert not Rendition.objects.filter(upload=item).exists()

    # The original is kept, so the admin's reprocess (normal limits) succeeds.
    services.request_reprocess(item.pk)
    item.refresh_from_db()
    assert finished(item, app)["status"] == "ready"
    assert len(files_of(item, media_root)) == 4


def test_temporary_files_of_a_killed_run_are_removed_by_the_next_run(
    media_worker, media_root, app, settings
):
    item = Upload(original_name="again.png")
    item.file.save("again.png", ContentFile(testing.encode(testing.halves((90, 60)), "PNG")))
    directory = media_root / item.renditions_dir
    directory.mkdir(parents=True)
    stale = directory / f"{services.TEMP_PREFIX}medium.jpg.k1lled"
    stale.write_bytes(b"half a jpe")
    long_ago = time.time() - 3600
    os.utime(stale, (long_ago, long_ago))
    live = directory / f"{services.TEMP_PREFIX}webp.webp.running"  # a concurrent run's
    live.write_bytes(b"RIFF")

    result = process_upload.delay(item.pk)
    assert result.get(timeout=RESULT_TIMEOUT)["status"] == "ready"

    assert not stale.exists()
    assert live.exists()
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["medium.jpg", "thumbnail.jpg", "webp.webp", live.name]
    )


def test_the_worker_applies_the_queue_table_limits_to_media_tasks(media_worker, app):
    spec = queues.QUEUES_BY_NAME["media"]
    inspect = app.control.inspect(destination=[media_worker.hostname], timeout=10)
    registered = inspect.registered("time_limit", "soft_time_limit", "max_retries")
    line = next(
        line
        for line in registered[media_worker.hostname]
        if line.startswith("media.tasks.process_upload ")
    )
    assert re.search(rf"(?<!soft_)time_limit={spec.time_limit}\b", line), line
    assert f"soft_time_limit={spec.soft_time_limit}" in line, line
    assert f"max_retries={spec.max_retries}" in line, line


def test_a_missing_upload_fails_at_once_without_retry(media_worker, app):
    result = process_upload.delay(987654321)
    with pytest.raises(Exception, match="no upload with id 987654321"):
        result.get(timeout=RESULT_TIMEOUT)
    assert result.retries == 0
