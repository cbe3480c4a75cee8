"""Task arguments checked against the task's own signature, when sent and when run.

A task declares its argument types the Python way, with annotations
(``def process_upload(self, upload_id: int)``). From them pydantic builds one
model per task (once, on first use); ``.delay()``/``apply_async`` checks the
arguments against it and sends what it validated (``"5"`` for an ``int`` is
sent as ``5``), so wrong types, unknown or missing arguments and a message over
its queue's size limit fail in the caller with a message naming the problem.
The worker checks again (a message can come from elsewhere: ``send_task``, an old
producer, a replay): a mismatch there fails the task at once, into one dead
letter, never a retry.

A task with ``*args`` or ``**kwargs`` accepts anything and is not checked.

Most calls pass every argument positionally, each already of its annotated
scalar type (an id as an ``int``, a name as a ``str``): those are accepted
without building a pydantic model instance (``_exact_scalars``), which is most
of what a check costs (0.05 ms of a 0.4 ms ``.delay()``); anything else (a
keyword, a ``"5"`` for an ``int``, a list) goes through pydantic.
"""

from __future__ import annotations

import inspect
import typing
from typing import NamedTuple

from kombu.utils.json import dumps
from pydantic import ConfigDict, ValidationError, create_model

_UNCHECKED = object()  # the task takes *args/**kwargs: nothing to check against


class InvalidTaskArguments(TypeError):
    """The arguments do not fit the task's signature; the message says how."""


class MessageTooLarge(ValueError):
    """The task's message would be over its queue's ``max_message_bytes``."""


def registered_task(app, name: str):
    """The task registered as ``name``, or None.

    Outside a worker only the task modules something imported are registered: on
    a miss, every task module is imported (CELERY_IMPORTS and each app's tasks), as
    a worker does at start.
    """
    if name not in app.tasks:
        app.loader.import_default_modules()
    return app.tasks.get(name)


class _Checker(NamedTuple):
    signature: inspect.Signature
    model: type
    shown: str  # the signature as error messages show it
    # Per parameter, in order: the type a value must have exactly to be accepted
    # as it is (``object``: any value, the parameter is unannotated or ``Any``);
    # None when some parameter can only be checked by pydantic.
    exact_types: tuple[type, ...] | None


# Annotations whose values pydantic returns unchanged when given exactly that type.
_SCALARS = frozenset({int, str, float, bool, bytes})


def _exact_types(signature: inspect.Signature, hints: dict) -> tuple[type, ...] | None:
    types = []
    for name, parameter in signature.parameters.items():
        if parameter.kind is not parameter.POSITIONAL_OR_KEYWORD:
            return None
        hint = hints.get(name, typing.Any)
        if hint is typing.Any:
            types.append(object)
        elif hint in _SCALARS:
            types.append(hint)
        else:
            return None
    return tuple(types)


def _exact_scalars(checker: _Checker, args, kwargs) -> bool:
    """Every parameter given positionally, each value of exactly its annotated type."""
    types = checker.exact_types
    if types is None or kwargs or args is None or len(args) != len(types):
        return False
    for value, kind in zip(args, types, strict=True):
        if kind is not object and type(value) is not kind:
            return False
    return True


def _model_for(task):
    model = task.__dict__.get("_argument_model")
    if model is None:
        model = _build_model(task)
        task._argument_model = model
    return model


def _build_model(task):
    run = task.run
    signature = inspect.signature(run)
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()):
        return _UNCHECKED
    try:
        hints = typing.get_type_hints(run)
    except Exception:  # an annotation that does not resolve: check names only
        hints = {}
    fields = {
        name: (
            hints.get(name, typing.Any),
            ... if parameter.default is parameter.empty else parameter.default,
        )
        for name, parameter in signature.parameters.items()
    }
    model = create_model(
        f"{task.name}.arguments",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )
    shown = signature.replace(
        parameters=[
            p.replace(annotation=hints.get(name, p.annotation))
            for name, p in signature.parameters.items()
        ],
        return_annotation=inspect.Signature.empty,
    )
    return _Checker(signature, model, f"{task.name}{shown}", _exact_types(signature, hints))


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        given = repr(item.get("input"))
        if len(given) > 60:
            given = given[:57] + "..."
        parts.append(f"{where}: {item['msg']} (got {given})")
    return "; ".join(parts)


def checked(task, args, kwargs) -> tuple[list | tuple, dict]:
    """``(args, kwargs)`` validated against ``task``'s signature, or InvalidTaskArguments."""
    built = _model_for(task)
    if built is _UNCHECKED:
        return args or (), kwargs or {}
    if _exact_scalars(built, args, kwargs):
        return tuple(args), {}
    signature, model, shown, _ = built
    try:
        bound = signature.bind(*(args or ()), **(kwargs or {}))
    except TypeError as exc:
        problem = str(exc)
        try:  # an unknown argument is named before a missing one
            signature.bind_partial(*(args or ()), **(kwargs or {}))
        except TypeError as unknown:
            problem = str(unknown)
        raise InvalidTaskArguments(f"{shown}: {problem}") from None
    try:
        validated = model.model_validate(bound.arguments)
    except ValidationError as exc:
        raise InvalidTaskArguments(f"{shown}: {_describe(exc)}") from None
    for name in bound.arguments:
        bound.arguments[name] = getattr(validated, name)
    return bound.args, bound.kwargs


def check_message(task, args, kwargs, queue=None) -> tuple[list | tuple, dict]:
    """The arguments to send for ``task``: validated, and within their queue's size limit."""
    from .queues import queue_table

    args, kwargs = checked(task, args, kwargs)
    table = queue_table()
    queue = getattr(queue, "name", queue) or table.queue_for_task(task.name)  # name or Queue
    check_size(task.name, queue, args, kwargs, table.max_message_bytes(queue))
    return args, kwargs


# JSON characters a scalar argument can take at most: a float's repr, an int below
# 10**18 with its sign, true/false/null.
_SCALAR_JSON_CHARS = 32


def _json_size_bound(args, kwargs, limit: int) -> int | None:
    """An upper bound of ``len(dumps([args, kwargs]))`` from scalars and short strings,
    or None when an argument is of another kind (then the arguments are serialised).

    Most task arguments are ids and short strings: bounding their size costs a
    tenth of serialising them, on every ``.delay()``.
    """
    size = 8
    for value in (*args, *kwargs, *kwargs.values()):
        kind = type(value)
        if kind is str:
            size += 6 * len(value) + 3  # each character at worst a \uXXXX escape
        elif kind is bool or kind is float or value is None:
            size += _SCALAR_JSON_CHARS
        elif kind is int and -(10**18) < value < 10**18:
            size += _SCALAR_JSON_CHARS
        else:
            return None
        if size > limit:
            return None
    return size


def check_size(task_name: str, queue: str, args, kwargs, max_bytes: int | None) -> None:
    """Raise MessageTooLarge when the arguments alone are over the queue's limit."""
    if not max_bytes:
        return
    if _json_size_bound(args or (), kwargs or {}, max_bytes) is not None:
        return  # within the limit whatever their exact size
    size = len(dumps([args, kwargs]))
    if size > max_bytes:
        raise MessageTooLarge(
            f"{task_name}: its arguments are {size:,} bytes, over queue {queue!r}'s limit of "
            f"{max_bytes:,} (max_message_bytes): pass an id or a file path, not the data"
        )
