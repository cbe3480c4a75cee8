"""Admin pages for dead letters (browse, filter, replay, delete) and the outbox."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.utils.html import format_html

from . import deadletters, outbox
from .models import DeadLetter, OutboxMessage


class ReplayedFilter(admin.SimpleListFilter):
    title = "replayed"
    parameter_name = "replayed"

    def lookups(self, request, model_admin):
        return (("no", "not replayed"), ("yes", "replayed"))

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(replayed_at__isnull=True)
        if self.value() == "yes":
            return queryset.filter(replayed_at__isnull=False)
        return queryset


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = (
        "task_name",
        "queue",
        "reason",
        "exception_type",
        "short_message",
        "attempts",
        "last_seen",
        "replayed_at",
    )
    list_filter = ("reason", "queue", "task_name", ReplayedFilter, "exception_type")
    search_fields = ("task_id", "task_name", "exception_message")
    date_hierarchy = "last_seen"
    actions = ("replay_selected",)
    readonly_fields = [field.name for field in DeadLetter._meta.fields] + ["arguments"]
    exclude = ("args", "kwargs")

    def changelist_view(self, request, extra_context=None):
        # Letters parked in Redis (the database was away) and messages the transport
        # refused are stored first, as the command and the relay do.
        try:
            deadletters.store_parked_dead_letters()
        except Exception as exc:
            self.message_user(
                request,
                f"Dead letters parked in Redis were not read: {exc}",
                messages.WARNING,
            )
        return super().changelist_view(request, extra_context)

    @admin.display(description="message")
    def short_message(self, letter):
        return letter.exception_message[:120]

    @admin.display(description="arguments")
    def arguments(self, letter):
        body = json.dumps({"args": letter.args, "kwargs": letter.kwargs}, indent=2)
        return format_html("<pre>{}</pre>", body)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_replay_permission(self, request):
        return request.user.has_perm("taskcore.replay_deadletter")

    @admin.action(
        description="Replay selected dead letters (send the tasks again)", permissions=["replay"]
    )
    def replay_selected(self, request, queryset):
        # "Select all N matching" in the changelist makes this "replay all matching".
        outcome = deadletters.replay_many(queryset)
        if outcome.replayed:
            self.message_user(
                request, f"Replayed {len(outcome.replayed)} task(s).", messages.SUCCESS
            )
        for _pk, problem in outcome.failed:
            self.message_user(request, problem, messages.ERROR)


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ("id", "task_name", "created_at", "published_at", "attempts", "last_error")
    list_filter = (("published_at", admin.EmptyFieldListFilter), "task_name")
    search_fields = ("id", "task_name")
    actions = ("relay_now",)
    readonly_fields = [field.name for field in OutboxMessage._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Publish pending outbox messages now")
    def relay_now(self, request, queryset):
        counts = outbox.relay()
        level = messages.SUCCESS if not counts["failed"] else messages.WARNING
        self.message_user(request, f"Outbox relay: {counts}", level)
