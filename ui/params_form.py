"""An optimizer's parameters as a form: one widget per field of its Params, the paper default shown and editable,
the field's description as help; and pydantic's errors as one message per field."""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal

import streamlit as st


def _unwrap_optional(ann: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        optional = len(args) < len(typing.get_args(ann))
        if len(args) == 1:
            return args[0], optional
        return ann, optional
    return ann, False


def field_kind(ann: Any) -> tuple[str, bool, list[Any] | None]:
    """(kind, optional, choices): kind is literal | bool | int | float | str | json."""
    inner, optional = _unwrap_optional(ann)
    if typing.get_origin(inner) is Literal:
        return "literal", optional, list(typing.get_args(inner))
    if inner is bool:
        return "bool", optional, None
    if inner is int:
        return "int", optional, None
    if inner is float:
        return "float", optional, None
    if inner is str:
        return "str", optional, None
    return "json", optional, None


def _bound(field: Any, name: str) -> Any:
    for m in getattr(field, "metadata", []):
        if hasattr(m, name):
            return getattr(m, name)
    return None


def params_form(params_cls: type, key_prefix: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """One widget per Params field, default shown and editable, description as help. Returns the raw values (validate
    with params_cls(**values)). Optional fields are text inputs where empty means None."""
    out: dict[str, Any] = {}
    values = values or {}
    for name, f in params_cls.model_fields.items():
        default = f.get_default(call_default_factory=True)
        cur = values.get(name, default)
        kind, optional, choices = field_kind(f.annotation)
        label = name.replace("_", " ")
        helptext = (f.description or "") + f"  \nDefault: {default!r}"
        key = f"{key_prefix}.{name}"
        if kind == "literal":
            opts = list(choices or [])
            if optional:
                opts = [None, *opts]
            out[name] = st.selectbox(label, opts, index=opts.index(cur) if cur in opts else 0, key=key, help=helptext,
                                     format_func=lambda v: "(none)" if v is None else str(v))
        elif kind == "bool" and not optional:
            out[name] = st.checkbox(label, value=bool(cur), key=key, help=helptext)
        elif kind in ("int", "float") and not optional:
            lo, hi = _bound(f, "ge"), _bound(f, "le")
            if kind == "int":
                out[name] = int(st.number_input(label, value=int(cur), step=1, key=key, help=helptext,
                                                min_value=int(lo) if lo is not None else None,
                                                max_value=int(hi) if hi is not None else None))
            else:
                out[name] = float(st.number_input(label, value=float(cur), key=key, help=helptext, format="%g",
                                                  min_value=float(lo) if lo is not None else None,
                                                  max_value=float(hi) if hi is not None else None))
        elif kind == "str" and not optional:
            out[name] = st.text_input(label, value=str(cur), key=key, help=helptext)
        else:  # optional scalars and anything structured: text, empty = None, JSON for structures
            shown = "" if cur is None else (cur if isinstance(cur, str) and kind == "str" else json.dumps(cur))
            raw = st.text_input(label, value=shown, key=key, help=helptext + "  \nEmpty: none.")
            out[name] = parse_field_text(raw, kind)
    return out


def parse_field_text(raw: str, kind: str) -> Any:
    raw = (raw or "").strip()
    if raw == "":
        return None
    if kind == "str":
        return raw
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            return raw  # the model validation names the field
    if kind == "float":
        try:
            return float(raw)
        except ValueError:
            return raw
    if kind == "bool":
        return raw.lower() in ("1", "true", "yes", "on")
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def validation_messages(err: Exception) -> list[str]:
    """A pydantic ValidationError as one message per field; anything else as its text."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        try:
            return [f"{'.'.join(str(x) for x in e.get('loc', ())) or 'value'}: {e.get('msg')}" for e in errors()]
        except Exception:
            pass
    return [str(err)]
