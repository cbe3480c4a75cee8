"""Admin for uploads: upload a file, follow its status, preview renditions, reprocess."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import ngettext

from . import conf, services
from .models import Upload

STATUS_COLOURS = {
    Upload.Status.PENDING: "#777",
    Upload.Status.PROCESSING: "#2a6ebb",
    Upload.Status.READY: "#218838",
    Upload.Status.REJECTED: "#c82333",
    Upload.Status.FAILED: "#d9822b",
}


class UploadForm(forms.ModelForm):
    class Meta:
        model = Upload
        fields = ("file",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "file" in self.fields:  # the add form; afterwards everything is read-only
            self.fields["file"].required = True
            self.fields["file"].help_text = (
                "JPEG, PNG, WebP or GIF, checked by content on a worker. "
                f"At most {conf.max_upload_bytes() // (1024 * 1024)} MB."
            )

    def clean_file(self):
        file = self.cleaned_data["file"]
        limit = conf.max_upload_bytes()
        # The worker checks again (by content); refusing here spares storing a huge file.
        if file and file.size > limit:
            raise forms.ValidationError(
                f"The file is {file.size / 2**20:.1f} MB; the limit is {limit / 2**20:.1f} MB."
            )
        return file


def _rendition_url(rendition) -> str:
    return reverse("media:rendition", args=[rendition.upload.key, rendition.name])


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    form = UploadForm
    list_display = (
        "preview",
        "original_name",
        "status_badge",
        "short_reason",
        "dimensions",
        "detected_format",
        "size",
        "attempts",
        "created_at",
    )
    list_display_links = ("preview", "original_name")
    list_filter = ("status", "detected_format")
    search_fields = ("original_name", "=key")
    date_hierarchy = "created_at"
    actions = ("reprocess_uploads",)
    readonly_fields = (
        "original_name",
        "status_badge",
        "reason",
        "renditions_preview",
        "detected_format",
        "dimensions",
        "size",
        "attempts",
        "key",
        "stored_as",
        "task_id",
        "uploaded_by",
        "created_at",
        "updated_at",
        "processed_at",
    )

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("renditions")

    def get_fields(self, request, obj=None):
        return ("file",) if obj is None else self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:  # nothing is editable after the upload
            return
        obj.uploaded_by = request.user
        obj.original_name = form.cleaned_data["file"].name
        services.store_upload(obj)

    def response_add(self, request, obj, post_url_continue=None):
        self.message_user(
            request,
            f"{obj.original_name} is stored and queued for processing; "
            "its status changes here when a worker has checked it.",
            messages.SUCCESS,
        )
        return HttpResponseRedirect(reverse("admin:media_upload_change", args=[obj.pk]))

    # --- display ---------------------------------------------------------------

    @admin.display(description="Preview")
    def preview(self, obj):
        renditions = sorted(obj.renditions.all(), key=lambda item: item.width)
        if not renditions:
            return "-"
        smallest = renditions[0]
        return format_html(
            '<img src="{}" alt="" style="max-width:80px;max-height:80px" loading="lazy">',
            _rendition_url(smallest),
        )

    @admin.display(description="Renditions")
    def renditions_preview(self, obj):
        renditions = list(obj.renditions.all())
        if not renditions:
            return "-"
        return format_html_join(
            "",
            '<figure style="display:inline-block;margin:0 1em 1em 0;vertical-align:top">'
            '<a href="{0}"><img src="{0}" alt="{1}" style="max-width:320px;max-height:320px"></a>'
            "<figcaption>{1}: {2}x{3} {4}, {5} KB</figcaption></figure>",
            (
                (
                    _rendition_url(item),
                    item.name,
                    item.width,
                    item.height,
                    item.format,
                    round(item.size_bytes / 1024, 1),
                )
                for item in renditions
            ),
        )

    @admin.display(description="Stored as")
    def stored_as(self, obj):
        # The name only, no link: the original still carries the uploader's metadata.
        return obj.file.name or "(deleted)"

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj):
        return format_html(
            '<strong style="color:{}">{}</strong>',
            STATUS_COLOURS.get(obj.status, "#000"),
            obj.get_status_display(),
        )

    @admin.display(description="Reason")
    def short_reason(self, obj):
        return obj.reason if len(obj.reason) <= 100 else obj.reason[:99] + "…"

    @admin.display(description="Size (px)")
    def dimensions(self, obj):
        return f"{obj.width}x{obj.height}" if obj.width else "-"

    @admin.display(description="File size", ordering="size_bytes")
    def size(self, obj):
        return (
            f"{obj.size_bytes / 1024:.0f} KB"
            if obj.size_bytes < 2**20
            else (f"{obj.size_bytes / 2**20:.1f} MB")
        )

    # --- reprocess -------------------------------------------------------------

    @admin.action(description="Reprocess selected uploads", permissions=("change",))
    def reprocess_uploads(self, request, queryset):
        queued, refused = 0, []
        for upload_id in queryset.values_list("pk", flat=True):
            try:
                services.request_reprocess(upload_id)
                queued += 1
            except services.CannotReprocess as exc:
                refused.append(str(exc))
        if queued:
            self.message_user(
                request,
                ngettext(
                    "%d upload queued for processing.", "%d uploads queued for processing.", queued
                )
                % queued,
                messages.SUCCESS,
            )
        for reason in refused:
            self.message_user(request, f"Not reprocessed: {reason}", messages.WARNING)

    def get_urls(self):
        urls = [
            path(
                "<path:object_id>/reprocess/",
                self.admin_site.admin_view(self.reprocess_view),
                name="media_upload_reprocess",
            )
        ]
        return urls + super().get_urls()

    def reprocess_view(self, request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        upload = get_object_or_404(Upload, pk=object_id)
        if not self.has_change_permission(request, upload):
            raise PermissionDenied
        self.reprocess_uploads(request, Upload.objects.filter(pk=upload.pk))
        return HttpResponseRedirect(reverse("admin:media_upload_change", args=[upload.pk]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        upload = self.get_object(request, object_id)
        extra_context = {
            **(extra_context or {}),
            # Nothing is editable after the upload: no save buttons.
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
            "can_reprocess": bool(
                upload
                and upload.file
                and upload.status != Upload.Status.REJECTED
                and self.has_change_permission(request, upload)
            ),
        }
        return super().change_view(request, object_id, form_url, extra_context)
