"""URLs of the media app (mounted by admin_backend/urls.py under media-files/)."""

from django.urls import path

from . import views

app_name = "media"

urlpatterns = [
    path("renditions/<uuid:key>/<slug:name>/", views.rendition, name="rendition"),
]
