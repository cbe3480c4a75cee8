"""URLs of the notifications app (mounted under /notifications/ by admin_backend/urls.py)."""

from django.urls import path

from . import views

app_name = "notifications"

urlpatterns = [
    path("unsubscribe/<str:token>/", views.unsubscribe, name="unsubscribe"),
]
