"""URLs of the taskcore app (mounted by admin_backend/urls.py)."""

urlpatterns: list = []
