"""URLs of the media app (mounted by admin_backend/urls.py)."""

urlpatterns: list = []
