"""JSON Schema of ``celery_health --format json`` (and of ``/health/?detail=1``).

A contract for scripts and dashboards that read the report; the tests validate
every JSON output against it.
"""

STATUS = {"type": "string", "enum": ["ok", "warning", "critical"]}

CHECK = {
    "type": "object",
    "required": ["name", "status", "latency_ms", "detail", "remedy", "data"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9_]+(\.[a-z0-9_-]+)?$"},
        "status": STATUS,
        "latency_ms": {"type": ["number", "null"], "minimum": 0},
        "detail": {"type": "string", "minLength": 1},
        # Empty when ok; one line saying what to do otherwise.
        "remedy": {"type": "string"},
        "data": {"type": "object"},
    },
    "if": {"properties": {"status": {"enum": ["warning", "critical"]}}},
    "then": {"properties": {"remedy": {"minLength": 1}}},
}

REPORT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "celery_health report",
    "type": "object",
    "required": [
        "status",
        "exit_code",
        "generated_at",
        "duration_ms",
        "broker",
        "counts",
        "checks",
    ],
    "additionalProperties": False,
    "properties": {
        "status": STATUS,
        "exit_code": {"type": "integer", "enum": [0, 1, 2]},
        "generated_at": {"type": "string", "format": "date-time"},
        "duration_ms": {"type": "number", "minimum": 0},
        "broker": {"type": "string"},
        "counts": {
            "type": "object",
            "required": ["ok", "warning", "critical"],
            "additionalProperties": False,
            "properties": {
                key: {"type": "integer", "minimum": 0} for key in ("ok", "warning", "critical")
            },
        },
        "checks": {"type": "array", "items": CHECK},
    },
}
