"""URLs of the taskcore app (mounted at the site root by admin_backend/urls.py)."""

from django.urls import path

from . import views

urlpatterns = [
    path("health/live", views.live, name="health-live"),
    path("health/ready", views.ready, name="health-ready"),
    path("health/", views.health, name="health"),
    path("metrics", views.metrics, name="metrics"),
]
