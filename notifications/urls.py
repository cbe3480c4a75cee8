"""URLs of the notifications app (mounted by admin_backend/urls.py)."""

urlpatterns: list = []
