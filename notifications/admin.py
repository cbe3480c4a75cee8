"""Admin pages: write a campaign, send it, watch its progress, resend the failed.

Sending needs the ``notifications.send_campaign`` permission, separate from
editing: writing a mailing and sending it to everyone are different powers.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.urls import reverse
from django.utils.html import format_html
from kombu.exceptions import OperationalError as BrokerUnavailable

from . import services, suppression
from .addresses import EmailInputError, clean_subject, parse_audience
from .composing import compile_campaign_template
from .models import Campaign, Delivery, Notification, Suppression, SuppressionRemoval

Status = Delivery.Status


class CampaignForm(forms.ModelForm):
    class Meta:
        model = Campaign
        fields = ("name", "subject", "text_template", "html_template", "audience")
        widgets = {
            "audience": forms.Textarea(attrs={"rows": 12, "cols": 80}),
            "text_template": forms.Textarea(attrs={"rows": 12, "cols": 80}),
            "html_template": forms.Textarea(attrs={"rows": 12, "cols": 80}),
        }

    # Each field is checked on its own, so an error shows beside the field it is about.
    def clean_subject(self):
        subject = self.cleaned_data["subject"]

        def check():
            clean_subject(subject)
            compile_campaign_template("subject", subject)

        return self._checked(check, subject)

    def clean_text_template(self):
        source = self.cleaned_data["text_template"]
        return self._checked(lambda: compile_campaign_template("text body", source), source)

    def clean_html_template(self):
        source = self.cleaned_data["html_template"]
        return self._checked(lambda: compile_campaign_template("HTML body", source), source)

    def clean_audience(self):
        audience = self.cleaned_data["audience"]
        return self._checked(lambda: parse_audience(audience), audience)

    @staticmethod
    def _checked(check, value):
        try:
            check()
        except EmailInputError as exc:
            raise forms.ValidationError(str(exc)) from None
        return value


def _with_counts(queryset):
    per_status = {
        f"n_{status}": Count("deliveries", filter=Q(deliveries__status=status))
        for status in Status.values
    }
    return queryset.annotate(total=Count("deliveries"), **per_status)


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    form = CampaignForm
    list_display = (
        "name",
        "status",
        "progress",
        "total",
        "queued",
        "sent",
        "failed",
        "skipped",
        "created_at",
        "finished_at",
    )
    list_filter = ("status",)
    search_fields = ("name", "subject")
    actions = ("send_campaigns", "resend_failed_recipients")
    readonly_fields = (
        "status",
        "progress",
        "counts",
        "error",
        "created_by",
        "created_at",
        "send_requested_at",
        "started_at",
        "finished_at",
    )

    def get_queryset(self, request):
        return _with_counts(super().get_queryset(request))

    def get_fieldsets(self, request, obj=None):
        content = (None, {"fields": CampaignForm.Meta.fields})
        if obj is None:
            return [content]
        return [("Sending", {"fields": self.readonly_fields}), content]

    def get_readonly_fields(self, request, obj=None):
        # Once sending has started the content is what recipients got: keep it.
        if obj and obj.status != Campaign.Status.DRAFT:
            return (*self.form.Meta.fields, *self.readonly_fields)
        return self.readonly_fields

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    # --- counts and progress -------------------------------------------------

    @admin.display(description="recipients", ordering="total")
    def total(self, campaign):
        return campaign.total

    @admin.display(description="queued")
    def queued(self, campaign):
        return campaign.n_queued + campaign.n_sending + campaign.n_deferred

    @admin.display(description="sent", ordering="n_sent")
    def sent(self, campaign):
        return self._deliveries_link(campaign, Status.SENT, campaign.n_sent)

    @admin.display(description="failed", ordering="n_failed")
    def failed(self, campaign):
        return self._deliveries_link(campaign, Status.FAILED, campaign.n_failed)

    @admin.display(description="skipped")
    def skipped(self, campaign):
        return campaign.n_skipped

    @admin.display(description="progress")
    def progress(self, campaign):
        total = getattr(campaign, "total", None)
        if not total:
            return "-"
        finished = campaign.n_sent + campaign.n_failed + campaign.n_skipped
        return format_html(
            '<progress value="{}" max="{}"></progress> {}%',
            finished,
            total,
            round(100 * finished / total),
        )

    @admin.display(description="deliveries")
    def counts(self, campaign):
        counts = services.campaign_counts(campaign.pk)
        parts = [f"{counts[status]} {label}" for status, label in Status.choices if counts[status]]
        url = (
            reverse("admin:notifications_delivery_changelist")
            + f"?campaign__id__exact={campaign.pk}"
        )
        return format_html(
            '{} of {}: <a href="{}">see each</a>', ", ".join(parts) or "none", counts["total"], url
        )

    def _deliveries_link(self, campaign, status, count):
        if not count:
            return 0
        url = reverse("admin:notifications_delivery_changelist")
        query = f"?campaign__id__exact={campaign.pk}&status__exact={status}"
        return format_html('<a href="{}">{}</a>', url + query, count)

    # --- actions ---------------------------------------------------------------

    def has_send_permission(self, request):
        return request.user.has_perm("notifications.send_campaign")

    @admin.action(description="Send (or resume) selected campaigns", permissions=["send"])
    def send_campaigns(self, request, queryset):
        started, resumed, idle = [], 0, []
        try:
            for campaign in queryset:
                if campaign.status in (Campaign.Status.DRAFT, Campaign.Status.QUEUED):
                    services.request_campaign_send(campaign.pk)
                    started.append(campaign.name)
                elif campaign.status == Campaign.Status.SENDING:
                    resumed += services.resume_stalled_deliveries(campaign.pk)
                else:
                    idle.append(campaign.name)
        except BrokerUnavailable as exc:
            # Only resuming publishes directly; sending goes through the outbox.
            self.message_user(
                request, f"The task broker is unreachable ({exc}): resume later.", messages.ERROR
            )
            return
        if started:
            self.message_user(request, f"Sending: {', '.join(started)}.", messages.SUCCESS)
        if resumed:
            self.message_user(
                request, f"Resumed {resumed} stalled delivery(ies).", messages.SUCCESS
            )
        if idle:
            self.message_user(
                request,
                f"Already sent, nothing to do: {', '.join(idle)} (use 'Resend failed recipients').",
                messages.WARNING,
            )

    @admin.action(
        description="Resend failed recipients of selected campaigns", permissions=["send"]
    )
    def resend_failed_recipients(self, request, queryset):
        total = sum(services.resend_failed(campaign.pk) for campaign in queryset)
        level = messages.SUCCESS if total else messages.WARNING
        self.message_user(request, f"Resending to {total} failed recipient(s).", level)


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = (
        "email",
        "name",
        "campaign",
        "notification",
        "status",
        "attempts",
        "smtp_code",
        "short_error",
        "sent_at",
    )
    list_filter = ("status", "campaign")
    list_select_related = ("campaign", "notification")
    search_fields = ("email", "name", "message_id")
    actions = ("resend_selected",)
    show_full_result_count = False

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in Delivery._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.display(description="error")
    def short_error(self, delivery):
        return delivery.error[:120]

    def has_send_permission(self, request):
        return request.user.has_perm("notifications.send_campaign")

    @admin.action(description="Resend selected failed deliveries", permissions=["send"])
    def resend_selected(self, request, queryset):
        count = services.resend_deliveries(list(queryset.values_list("pk", flat=True)))
        level = messages.SUCCESS if count else messages.WARNING
        self.message_user(request, f"Resending {count} failed delivery(ies).", level)


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("template", "subject", "recipients", "created_at")
    search_fields = ("subject", "deliveries__email")
    readonly_fields = ("template", "subject", "text_body", "html_body", "created_at")

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("deliveries")

    @admin.display(description="recipients")
    def recipients(self, notification):
        return ", ".join(f"{d.email} ({d.status})" for d in notification.deliveries.all())

    def has_add_permission(self, request):
        return False


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    """Who campaigns skip and why; deleting an entry (resubscribing) is audited."""

    list_display = ("email", "reason", "short_detail", "campaign", "created_at")
    list_filter = ("reason",)
    search_fields = ("email", "detail")
    list_select_related = ("campaign",)

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in Suppression._meta.fields]

    # Entries come from unsubscribes, bounces and import_bounces, with their evidence.
    def has_add_permission(self, request):
        return False

    @admin.display(description="detail")
    def short_detail(self, entry):
        return entry.detail[:120]

    def delete_model(self, request, obj):
        suppression.remove(Suppression.objects.filter(pk=obj.pk), removed_by=request.user)

    def delete_queryset(self, request, queryset):
        suppression.remove(queryset, removed_by=request.user)


@admin.register(SuppressionRemoval)
class SuppressionRemovalAdmin(admin.ModelAdmin):
    """The audit trail of removals: read-only."""

    list_display = ("email", "reason", "removed_by", "removed_at", "suppressed_at")
    list_filter = ("reason",)
    search_fields = ("email",)

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in SuppressionRemoval._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
