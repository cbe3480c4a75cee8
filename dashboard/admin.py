"""The audit trail of dashboard actions, read-only in the admin."""

from django.contrib import admin

from .models import OperatorAction


@admin.register(OperatorAction)
class OperatorActionAdmin(admin.ModelAdmin):
    list_display = ("created_at", "username", "action", "target", "succeeded", "outcome")
    list_filter = ("action", "succeeded")
    search_fields = ("username", "target", "outcome")
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _with_dashboard_link(get_app_list):
    """Add "Operations dashboard" to the admin index (and sidebar) for users allowed to see it."""

    def app_list(request, app_label=None):
        apps = get_app_list(request, app_label)
        if app_label not in (None, "dashboard"):
            return apps
        if not request.user.has_perm("dashboard.view_operations_dashboard"):
            return apps
        from django.urls import reverse

        link = {
            "name": "Operations dashboard",
            "object_name": "OperationsDashboard",
            "admin_url": reverse("dashboard:page"),
            "add_url": None,
            "view_only": True,
            "perms": {"view": True},
        }
        for app in apps:
            if app["app_label"] == "dashboard":
                app["models"].insert(0, link)
                return apps
        apps.append(
            {
                "name": "Operations dashboard",
                "app_label": "dashboard",
                "app_url": reverse("dashboard:page"),
                "has_module_perms": True,
                "models": [link],
            }
        )
        return apps

    app_list.dashboard_link = True
    return app_list


if not getattr(admin.site.get_app_list, "dashboard_link", False):
    admin.site.get_app_list = _with_dashboard_link(admin.site.get_app_list)
