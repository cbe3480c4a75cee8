"""URLs of the reports app (mounted by admin_backend/urls.py)."""

urlpatterns: list = []
