"""Django error reports that never show broker or cache passwords."""

from __future__ import annotations

import re

from django.views.debug import SafeExceptionReporterFilter

from .secrets import mask_text


class SecretSettingsFilter(SafeExceptionReporterFilter):
    # Django's default pattern plus URL-valued settings (broker, backend, cache).
    hidden_settings = re.compile(
        "API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|BROKER_URL|RESULT_BACKEND|REDIS_URL|DATABASE_URL",
        flags=re.I,
    )

    def cleanse_setting(self, key, value):
        value = super().cleanse_setting(key, value)
        if isinstance(value, str):
            return mask_text(value)
        return value
