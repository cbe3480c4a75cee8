"""The media admin (Django's test client) and the upload path up to the broker.

No worker here: what reaches the broker is read from the media queue in Redis,
and processing, where a page needs renditions, runs the service in-process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import InMemoryStorage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.urls import reverse

from media import conf, services, testing
from media.models import Upload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def media_queue(app):
    """The media queue's messages (task ids), emptied before and after the test."""
    client = redis.Redis.from_url(app.conf.broker_url)
    client.delete("media")

    def task_ids() -> list[str]:
        # kombu pushes on the left and workers pop on the right: oldest last in Redis.
        messages = reversed(client.lrange("media", 0, -1))
        return [json.loads(raw)["headers"]["id"] for raw in messages]

    yield task_ids
    client.delete("media")


@pytest.fixture
def staff(django_user_model, client):
    user = django_user_model.objects.create_superuser("admin", "admin@example.org", "pw-123456!")
    client.force_login(user)
    return user


@pytest.fixture
def media_root(settings) -> Path:
    return Path(settings.MEDIA_ROOT)


def jpeg_file(name="Holiday photo.JPG", size=(640, 480)) -> SimpleUploadedFile:
    data = testing.encode(testing.halves(size), "JPEG", exif=testing.camera_exif(1))
    return SimpleUploadedFile(name, data, content_type="image/jpeg")


def test_an_admin_upload_is_stored_under_a_generated_name_and_queued(
    client, staff, media_queue, media_root
):
    response = client.post(
        reverse("admin:media_upload_add"), {"file": jpeg_file("../../secret/Holiday photo.JPG")}
    )

    upload = Upload.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:media_upload_change", args=[upload.pk])
    assert upload.status == Upload.Status.PENDING
    assert upload.original_name == "Holiday photo.JPG"
    assert upload.uploaded_by == staff
    assert upload.file.name == f"uploads/originals/{upload.key.hex}.jpg"
    assert (media_root / upload.file.name).is_file()
    assert "Holiday" not in str(list(media_root.rglob("*")))
    assert media_queue() == [upload.task_id]  # one message, for this upload

    page = client.get(reverse("admin:media_upload_change", args=[upload.pk]))
    assert b"queued for processing" in page.content
    assert b"Pending" in page.content


def test_the_admin_refuses_an_oversized_file_before_storing_it(client, staff, media_queue):
    big = SimpleUploadedFile("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * conf.max_upload_bytes())

    response = client.post(reverse("admin:media_upload_add"), {"file": big})

    assert response.status_code == 200
    assert b"the limit is 20.0 MB" in response.content
    assert not Upload.objects.exists()
    assert media_queue() == []


def test_the_task_is_sent_after_commit_and_never_after_a_rollback(media_queue, media_root):
    with transaction.atomic():
        upload = services.create_upload(ContentFile(b"x", name="a.png"))
        assert media_queue() == []  # not while the row is invisible to workers
    assert media_queue() == [upload.task_id]

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        services.create_upload(ContentFile(b"y", name="b.png"))
        raise Abort
    assert media_queue() == [upload.task_id]  # nothing more was sent
    assert Upload.objects.count() == 1


def _processed(name="p.jpg", size=(640, 480)) -> Upload:
    upload = services.create_upload(jpeg_file(name, size))
    services.process_upload(upload.pk)  # in-process: services work without Celery
    upload.refresh_from_db()
    return upload


def test_the_changelist_shows_status_reason_and_a_thumbnail(client, staff, media_queue):
    ready = _processed("ready.jpg")
    rejected = services.create_upload(ContentFile(b"just text", name="notes.png"))
    services.process_upload(rejected.pk)

    page = client.get(reverse("admin:media_upload_changelist")).content.decode()

    assert "ready.jpg" in page and "notes.png" in page
    assert "Ready" in page and "Rejected" in page
    assert "the content is plain text, not a JPEG, PNG, WebP or GIF image" in page
    assert "640x480" in page
    thumbnail = reverse("media:rendition", args=[ready.key, "thumbnail"])
    assert f'src="{thumbnail}"' in page

    filtered = client.get(reverse("admin:media_upload_changelist"), {"status__exact": "rejected"})
    assert "notes.png" in filtered.content.decode()
    assert "ready.jpg" not in filtered.content.decode()


def test_the_change_page_previews_every_rendition(client, staff, media_queue):
    upload = _processed()

    page = client.get(reverse("admin:media_upload_change", args=[upload.pk])).content.decode()

    for name, size in {"thumbnail": "150x113", "medium": "640x480", "webp": "640x480"}.items():
        url = reverse("media:rendition", args=[upload.key, name])
        assert f'src="{url}"' in page
        assert f"{name}: {size} " in page
        response = client.get(url)
        assert response.status_code == 200
        assert response["Content-Type"] == ("image/webp" if name == "webp" else "image/jpeg")
        assert response["X-Content-Type-Options"] == "nosniff"
        assert (
            len(b"".join(response.streaming_content)) == upload.renditions.get(name=name).size_bytes
        )
    assert "Reprocess" in page


def test_previews_need_a_staff_login(client, django_user_model, media_queue):
    upload = _processed()
    url = reverse("media:rendition", args=[upload.key, "thumbnail"])

    assert client.get(url).status_code == 302  # to the admin login
    django_user_model.objects.create_user("visitor", password="pw-123456!", is_staff=True)
    client.login(username="visitor", password="pw-123456!")
    assert client.get(url).status_code == 403  # staff without the view permission
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.org", "x"))
    assert client.get(url).status_code == 200
    assert client.get(reverse("media:rendition", args=[upload.key, "nope"])).status_code == 404


def test_the_reprocess_action_queues_ready_uploads_and_explains_refusals(
    client, staff, media_queue
):
    ready = _processed("ready.jpg")
    old_task = ready.task_id
    rejected = services.create_upload(ContentFile(b"<svg/>", name="x.svg"))
    services.process_upload(rejected.pk)
    waiting = services.create_upload(jpeg_file("waiting.jpg"))
    media_queue_before = media_queue()

    response = client.post(
        reverse("admin:media_upload_changelist"),
        {"action": "reprocess_uploads", "_selected_action": [ready.pk, rejected.pk, waiting.pk]},
        follow=True,
    )

    page = response.content.decode()
    assert "1 upload queued for processing." in page
    assert "Not reprocessed: x.svg: rejected, its file was deleted" in page
    assert "Not reprocessed: waiting.jpg: already pending" in page
    ready.refresh_from_db()
    assert ready.status == Upload.Status.PENDING and ready.task_id != old_task
    assert media_queue() == [*media_queue_before, ready.task_id]


def test_the_reprocess_button_on_the_change_page(client, staff, media_queue):
    upload = _processed()
    url = reverse("admin:media_upload_reprocess", args=[upload.pk])

    assert client.get(url).status_code == 405
    response = client.post(url)

    assert response.status_code == 302
    upload.refresh_from_db()
    assert upload.status == Upload.Status.PENDING
    assert media_queue()[-1] == upload.task_id


def test_deleting_an_upload_deletes_its_files(client, staff, media_queue, media_root):
    upload = _processed()
    files = [media_root / upload.file.name, media_root / upload.renditions_dir]
    assert all(path.exists() for path in files)

    response = client.post(reverse("admin:media_upload_delete", args=[upload.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Upload.objects.exists()
    assert not any(path.exists() for path in files)


def test_rendition_settings_are_checked(settings):
    settings.MEDIA_RENDITIONS = {"Big Picture": {"size": 0, "format": "TIFF"}}
    with pytest.raises(ImproperlyConfigured, match="name 'Big Picture'"):
        conf.renditions()
    settings.MEDIA_RENDITIONS = {"big": {"size": 2000, "format": "tiff"}}
    with pytest.raises(ImproperlyConfigured, match="must be one of JPEG, WEBP, PNG"):
        conf.renditions()
    settings.MEDIA_UPLOAD_MAX_PIXELS = -1
    errors = [e for e in checks.run_checks() if e.id == "media.E001"]
    assert len(errors) == 2

    settings.MEDIA_RENDITIONS = {"small": {"size": 64}, "large": {"size": 512, "format": "webp"}}
    assert [(s.name, s.size, s.format, s.filename) for s in conf.renditions()] == [
        ("large", 512, "WEBP", "large.webp"),
        ("small", 64, "JPEG", "small.jpg"),
    ]


def test_a_storage_without_local_paths_gets_whole_files_under_the_same_name():
    storage = InMemoryStorage()
    name = "uploads/renditions/abc/medium.jpg"

    services.write_atomically(storage, name, b"first run")
    services.write_atomically(storage, name, b"second run")

    assert storage.listdir("uploads/renditions/abc") == ([], ["medium.jpg"])
    with storage.open(name) as handle:
        assert handle.read() == b"second run"
