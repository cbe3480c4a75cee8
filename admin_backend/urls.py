from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/operations/", include("dashboard.urls")),
    path("admin/", admin.site.urls),
    # Health endpoints and metrics (taskcore), downloads (reports), media and email views.
    path("", include("taskcore.urls")),
    path("reports/", include("reports.urls")),
    path("media-files/", include("media.urls")),
    path("notifications/", include("notifications.urls")),
]
