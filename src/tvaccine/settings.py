"""Resolve a method's settings: the config's defaults, then a YAML recipe, then ``--key value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from tvaccine.errors import UserError


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a YAML file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = yaml.safe_load(text)
    except yaml.reader.ReaderError as err:  # a character YAML does not allow (NUL, other control characters)
        line = text.count("\n", 0, err.position) + 1
        raise UserError(f"{path}:{line}: invalid YAML (character {err.character!r} is not allowed)") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: invalid YAML ({getattr(err, 'problem', err)})") from err
    except RecursionError as err:
        raise UserError(f"{path}: invalid YAML (nested too deeply)") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def parse_scalar(text: str) -> Any:
    """A command-line value as YAML reads it, except that "1e-3" is a number and "no"/"yes"/"on"/"off" are strings
    (``--save-strategy no``); only true and false are booleans."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, bool) and text.strip().lower() not in ("true", "false"):
        return text
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string; a number is meant
            return float(value)
        except ValueError:
            pass
    return value


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """``--rho 2 --num-active-layers 4 --bf16`` → {"rho": 2, "num_active_layers": 4, "bf16": True}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or len(tok) < 3:
            raise UserError(f"unexpected argument '{tok}' (settings are given as --name value)")
        key, _, value = tok[2:].partition("=")
        key = key.replace("-", "_")
        if not _:
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value, i = tokens[i + 1], i + 1
            else:
                value = "true"
        out[key] = parse_scalar(value)
        i += 1
    return out


def build_config(cls: type, *layers: dict, where: list[str] | None = None) -> Any:
    """Instantiate ``cls`` from merged setting dicts; an unknown key names its source and the closest field, a value
    of the wrong type names its source and field."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    merged: dict[str, Any] = {}
    source: dict[str, str] = {}
    for n, layer in enumerate(layers):
        src = where[n] if where else "settings"
        if not isinstance(layer, dict):
            raise UserError(f"{src}: expected a mapping of settings, got {type(layer).__name__}")
        for key, value in layer.items():
            if key not in names:
                hint = difflib.get_close_matches(str(key), names, n=1)
                raise UserError(f"{src}: unknown setting '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
            merged[key] = typed_value(value, hints[key], f"{src}: {key}")
            source[key] = src
    try:
        return cls(**merged)
    except UserError as err:
        field = getattr(err, "field", None)
        if field in source:  # name the recipe or the command line the bad value came from
            raise UserError(f"{source[field]}: {err}") from err
        raise
    except (TypeError, ValueError) as err:  # TrainingArguments' own checks: name where the settings came from
        raise UserError(f"{', '.join(dict.fromkeys(source.values())) or cls.__name__}: {err}") from err


_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
          list: "a list", type(None): "null"}


def typed_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against a config field's annotation, or a UserError naming ``where``. Integers pass for
    floats, integral floats (YAML's ``1e3``) for integers, numbers for strings and a string for a list of strings
    (comma-separated); NaN and infinity never pass. Annotations this does not know (enums, accelerate objects)
    pass."""
    raw = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    options = tuple(typing.get_origin(o) or o for o in raw)  # list[str] → list, dict[str, Any] → dict
    # the element type of a list field (list[float] → float; a bare list holds strings)
    item = next(((typing.get_args(o) or (str,))[0] for o in raw if (typing.get_origin(o) or o) is list), str)
    if value is None and type(None) in options:
        return None
    if isinstance(value, bool):
        if bool in options:
            return value
    elif isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value) and (int in options or float in options):
            raise UserError(f"{where}: must be a finite number (got {value!r})")
        if float in options:
            return value
        if int in options and float(value).is_integer():
            return int(value)
        if str in options:
            return str(value)
        if list in options and item in (int, float):  # --adversary-lrs 1e-4: a list of one
            return [typed_value(value, item, where)]
    elif isinstance(value, str):
        if str in options:
            return value
        if float in options or int in options:  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                return typed_value(number, hint, where)
        if list in options:  # "q_proj,v_proj" on the command line
            return [typed_value(parse_scalar(v.strip()), item, where) for v in value.split(",") if v.strip()]
    elif isinstance(value, list):
        if list in options:
            return [typed_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif isinstance(value, dict) and dict in options:
        return value
    known = [o for o in options if o in _WORDS]
    if len(known) < len(options):  # a type this check does not model: leave it to the config class
        return value
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    words = [f"a list of {_WORDS[item].removeprefix('a ')}s" if o is list and item in _WORDS else _WORDS[o]
             for o in known]
    raise UserError(f"{where}: must be {' or '.join(words)} (got {shown})")
