"""What may be exported: which models, which columns, which filters.

The rules, in one place:

- a model is exportable when it is registered in the Django admin (``admin.site``);
- its columns are its concrete fields, minus binary ones and minus every field
  that looks or is declared sensitive (passwords, tokens, secrets, keys...);
- a filter is a dict of ORM lookups on those columns only: no traversal into
  related models (that could reveal what the user cannot see, e.g. a password
  hash one prefix at a time), values are JSON scalars or lists of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from django.apps import apps
from django.contrib import admin
from django.core.exceptions import (
    EmptyResultSet,
    FieldDoesNotExist,
    FieldError,
    ValidationError,
)
from django.db import models
from django.db.models import QuerySet

from taskcore.base import PermanentError

from . import conf


class ExportError(PermanentError):
    """An export request that can never succeed: the message says why."""


class UnknownModel(ExportError):
    pass


class UnknownField(ExportError):
    pass


class BadFilter(ExportError):
    pass


class ExportPermissionDenied(ExportError):
    pass


# A field is sensitive when one of the "_"-separated parts of its name is one of
# these, or its name contains one of the substrings (``apikey``, ``user_password``).
SENSITIVE_NAME_PARTS = frozenset(
    {"password", "passwd", "pwd", "secret", "token", "key", "salt", "otp", "credential"}
)
SENSITIVE_SUBSTRINGS = ("password", "passwd", "secret", "token", "apikey", "credential")
_NAME_PARTS = re.compile(r"[^a-z0-9]+")

# Python types a filter value may have once decoded from JSON.
_SCALARS = (str, int, float, bool, type(None))


def is_sensitive_name(name: str) -> bool:
    lowered = name.lower()
    if any(word in lowered for word in SENSITIVE_SUBSTRINGS):
        return True
    return any(part in SENSITIVE_NAME_PARTS for part in _NAME_PARTS.split(lowered))


def resolve_model(model_label: str) -> type[models.Model]:
    """The model named ``app_label.ModelName``, if it is registered in the admin."""
    try:
        model = apps.get_model(str(model_label))
    except (LookupError, ValueError):
        raise UnknownModel(
            f"unknown model {model_label!r}: expected 'app_label.ModelName' of a model "
            "registered in the admin"
        ) from None
    if not admin.site.is_registered(model):
        raise UnknownModel(
            f"model {model._meta.label!r} is not registered in the admin, so it cannot be exported"
        )
    return model


def _declared_sensitive(model) -> set[str]:
    declared = set(getattr(model, "export_sensitive_fields", ()) or ())
    declared.update(conf.extra_sensitive_fields().get(model._meta.label, ()))
    return declared


def sensitive_fields(model) -> list[str]:
    declared = _declared_sensitive(model)
    return [
        field.name
        for field in model._meta.concrete_fields
        if field.name in declared or is_sensitive_name(field.name)
    ]


def exportable_fields(model) -> list[str]:
    """The model's concrete fields that may be exported, in declaration order."""
    hidden = set(sensitive_fields(model))
    return [
        field.name
        for field in model._meta.concrete_fields
        if field.name not in hidden and not isinstance(field, models.BinaryField)
    ]


def check_fields(model, requested: Iterable[str] | None) -> list[str]:
    """The requested columns by field name (attnames like ``user_id`` accepted), or all."""
    allowed = exportable_fields(model)
    if not requested:
        return allowed
    label = model._meta.label
    hidden = set(sensitive_fields(model))
    chosen: list[str] = []
    for raw in requested:
        name = str(raw).strip()
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            field = next((f for f in model._meta.concrete_fields if f.attname == name), None)
        if field is None or not getattr(field, "concrete", False):
            raise UnknownField(
                f"unknown field {name!r} for {label}; exportable fields: {', '.join(allowed)}"
            )
        if field.name in hidden:
            raise UnknownField(f"field {name!r} of {label} is sensitive and never exported")
        if field.name not in allowed:
            raise UnknownField(
                f"field {name!r} of {label} cannot be exported; exportable fields: "
                f"{', '.join(allowed)}"
            )
        if field.name in chosen:
            raise UnknownField(f"field {name!r} requested twice")
        chosen.append(field.name)
    return chosen


def _check_filter_value(key: str, value) -> None:
    if isinstance(value, list | tuple):
        if not all(isinstance(item, _SCALARS) for item in value):
            raise BadFilter(f"filter {key!r}: a list may hold only strings, numbers, booleans")
    elif not isinstance(value, _SCALARS):
        raise BadFilter(f"filter {key!r}: value must be a string, number, boolean, null or list")


def _check_lookup_parts(label: str, key: str, field, parts: list[str]) -> None:
    """Each part after the field must be a lookup or transform of it, never a related field."""
    if field.is_relation:
        if len(parts) > 1 or (parts and field.get_lookup(parts[0]) is None):
            raise BadFilter(
                f"filter {key!r}: filters cannot follow relations; on {label}.{field.name} "
                "use its id with a lookup such as 'exact', 'in' or 'isnull'"
            )
        return
    if isinstance(field, models.JSONField):
        return  # key transforms stay inside this column, which is exported anyway
    for part in parts:
        if field.get_lookup(part) is None and field.get_transform(part) is None:
            raise BadFilter(f"filter {key!r}: {part!r} is not a lookup of {label}.{field.name}")


def check_filters(model, filters: Mapping | None) -> dict:
    """Validate lookups against the exportable columns; return the filter dict."""
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise BadFilter(
            f"a filter is an object of lookups, e.g. {{'pk__in': [1, 2]}}; got {filters!r}"
        )
    label = model._meta.label
    allowed = set(exportable_fields(model))
    allowed_text = ", ".join(["pk", *sorted(allowed)])
    for key, value in filters.items():
        if not isinstance(key, str) or not key:
            raise BadFilter(f"filter keys are lookups like 'name__icontains', got {key!r}")
        name, *lookups = key.split("__")
        if name == "pk":
            field = model._meta.pk
        else:
            try:
                field = model._meta.get_field(name)
            except FieldDoesNotExist:
                field = next((f for f in model._meta.concrete_fields if f.attname == name), None)
            if field is None or field.name not in allowed:
                raise BadFilter(
                    f"filter {key!r}: {name!r} is not a filterable field of {label}; "
                    f"filterable: {allowed_text}"
                )
        _check_lookup_parts(label, key, field, lookups)
        _check_filter_value(key, value)
    return dict(filters)


def filtered_queryset(model, filters: Mapping | None) -> QuerySet:
    """``model`` filtered by validated lookups; bad values fail here with a clear message."""
    filters = check_filters(model, filters)
    try:
        queryset = model._default_manager.filter(**filters)
        # Compile now: a value the column cannot take fails here, not mid-export.
        queryset.query.get_compiler(using=queryset.db).as_sql()
    except EmptyResultSet:  # e.g. pk__in=[]: valid, matches nothing
        return model._default_manager.none()
    except (ValidationError, FieldError, ValueError, TypeError) as exc:
        message = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        raise BadFilter(f"bad filter {filters!r} for {model._meta.label}: {message}") from None
    return queryset


def can_export(user, model) -> bool:
    """The admin's rule for seeing a model: view or change permission on it."""
    if user is None or not user.is_active:
        return False
    opts = model._meta
    return user.has_perm(f"{opts.app_label}.view_{opts.model_name}") or user.has_perm(
        f"{opts.app_label}.change_{opts.model_name}"
    )


def require_export_permission(user, model) -> None:
    if not can_export(user, model):
        raise ExportPermissionDenied(
            f"{getattr(user, 'get_username', lambda: 'nobody')()!s} may not view "
            f"{model._meta.label}, so may not export it"
        )
