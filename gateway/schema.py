"""Dataclass schemas: fields with bounds, and validation of a mapping against them.

A config section is a dataclass; its type hints and the ``bounded(...)``
metadata of its fields are the schema. :func:`load_section` checks a mapping
(from YAML) against one, appending a line per problem that names the key path
and what is expected.

Imports nothing from the project (nor Twisted): door config modules build on it,
and :mod:`gateway.config` imports those through :mod:`gateway.doors`.
"""

import dataclasses
import difflib
import typing


def bounded(default=dataclasses.MISSING, *, minimum=None, maximum=None,
            choices=None, doc="", default_factory=dataclasses.MISSING):
    """A dataclass field with validation bounds (inclusive) or allowed values."""
    metadata = {"min": minimum, "max": maximum, "choices": choices, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def port(default=dataclasses.MISSING, doc=""):
    return bounded(default, minimum=1, maximum=65535, doc=doc)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _describe(annotation):
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _describe(inner[0]) + " or null"
    if origin in (list, typing.List):
        return "a list"
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _convert(annotation, value, path, problems, meta=None):
    """Check ``value`` against ``annotation``; return the typed value or None."""
    meta = meta or {}
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        if value is None:
            return None
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _convert(inner[0], value, path, problems, meta)
    if origin in (list, typing.List):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {describe_value(value)}")
            return []
        (item_type,) = typing.get_args(annotation)
        return [_convert(item_type, item, f"{path}[{index}]", problems)
                for index, item in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        return load_section(annotation, value, path, problems)
    if annotation is typing.Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if annotation is int and isinstance(value, bool) or not isinstance(value, annotation):
        problems.append(f"{path}: expected {_describe(annotation)}, got {describe_value(value)}")
        return None
    if meta.get("choices") is not None and value not in meta["choices"]:
        problems.append(f"{path}: expected one of {', '.join(map(str, meta['choices']))},"
                        f" got {value!r}")
        return None
    low, high = meta.get("min"), meta.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        problems.append(f"{path}: expected a value from {low} to {high}, got {value}")
        return None
    return value


def describe_value(value):
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 else "a string"
    return f"{type(value).__name__} {value!r}"


def load_section(cls, data, path, problems):
    """Build dataclass ``cls`` from mapping ``data``, appending to ``problems``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a mapping, got {describe_value(data)}")
        data = {}
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            problems.append(f"{path}.{key}: unknown key{suggestion(key, fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        key_path = f"{path}.{name}" if path else name
        if name in data:
            values[name] = _convert(hints[name], data[name], key_path, problems,
                                    field.metadata)
        elif (field.default is dataclasses.MISSING
              and field.default_factory is dataclasses.MISSING):
            problems.append(f"{key_path}: missing; expected {_describe(hints[name])}")
            values[name] = None
    return cls(**values)


def suggestion(key, known):
    close = difflib.get_close_matches(str(key), list(known), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (expected one of: {', '.join(sorted(known))})"
