"""URLs of the reports app (mounted under /reports/ by admin_backend/urls.py)."""

from django.urls import path

from . import views

app_name = "reports"

urlpatterns = [
    path("exports/<int:pk>/download/", views.download, name="download"),
    path("exports/<int:pk>/progress/", views.progress, name="progress"),
]
