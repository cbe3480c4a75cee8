"""CSV exports of model data, streamed, written atomically."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

from django.apps import apps
from django.conf import settings

from taskcore.base import PermanentError

SENSITIVE_FIELD_WORDS = ("password", "token", "secret", "key")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def exportable_fields(model) -> list[str]:
    return [
        field.name
        for field in model._meta.concrete_fields
        if not any(word in field.name.lower() for word in SENSITIVE_FIELD_WORDS)
    ]


def neutralise_formula(value) -> str:
    """Prefix a quote so spreadsheet programs show the text instead of running it."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def export_model_csv(model_label: str, fields: list[str] | None, output_name: str) -> dict:
    """Write every row of ``model_label`` to MEDIA_ROOT/exports/<output_name>.csv."""
    try:
        model = apps.get_model(model_label)
    except (LookupError, ValueError):
        raise PermanentError(
            f"unknown model {model_label!r} (expected 'app_label.ModelName')"
        ) from None
    allowed = exportable_fields(model)
    fields = list(fields or allowed)
    refused = [name for name in fields if name not in allowed]
    if refused:
        raise PermanentError(f"fields not exportable from {model_label}: {refused}")
    if not output_name.replace("-", "").replace("_", "").isalnum():
        raise PermanentError(f"invalid output name {output_name!r}")

    target_dir = Path(settings.MEDIA_ROOT) / "exports"
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{output_name}.csv"
    rows = 0
    # Write beside the target and rename: a killed task leaves no half-written export.
    fd, tmp_name = tempfile.mkstemp(dir=target_dir, prefix=".partial-", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(fields)
            for row in (
                model._default_manager.order_by("pk").values_list(*fields).iterator(chunk_size=2000)
            ):
                writer.writerow([neutralise_formula(value) for value in row])
                rows += 1
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return {"path": str(target), "rows": rows, "fields": fields}
