from django.contrib import admin
from django.urls import path

from . import views

app_name = "dashboard"

urlpatterns = [
    path("", admin.site.admin_view(views.page), name="page"),
    path("data.json", admin.site.admin_view(views.data), name="data"),
    path("workers/action", admin.site.admin_view(views.worker_action), name="worker-action"),
    path("dead-letters/replay", admin.site.admin_view(views.replay), name="replay"),
]
