"""Answer the probe endpoints before host validation and HTTPS redirects.

Orchestrators probe a pod by its IP (``Host: 10.1.2.3:8000``) over plain HTTP.
Through the normal middleware that is a 400 (the IP is not in ALLOWED_HOSTS) or
a 301 to HTTPS, and the pod is never ready. Placed first in MIDDLEWARE, this
serves ``/health/live``, ``/health/ready`` and ``/metrics`` directly; they build
no URL from the Host header, so skipping its validation is safe. Everything
else, ``/health/`` included, goes through the full stack.
"""

from __future__ import annotations

from django.urls import NoReverseMatch, reverse


class HealthProbeMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self._routes = None

    def routes(self) -> dict:
        if self._routes is None:
            from taskcore import views

            routes = {}
            for name, view in (
                ("health-live", views.live),
                ("health-ready", views.ready),
                ("metrics", views.metrics),
            ):
                try:
                    routes[reverse(name)] = view
                except NoReverseMatch:  # taskcore.urls not mounted: nothing to serve
                    pass
            self._routes = routes
        return self._routes

    def __call__(self, request):
        view = self.routes().get(request.path_info)
        if view is not None:
            return view(request)
        return self.get_response(request)
