"""Resolve a method's settings: the config's defaults, then a YAML recipe, then ``--key value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import yaml

from tvaccine.errors import UserError


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: invalid YAML ({getattr(err, 'problem', err)})") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


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
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
        if isinstance(out[key], str):
            try:  # YAML 1.1 reads "1e-3" (no dot) as a string; a number is meant
                out[key] = float(out[key])
            except ValueError:
                pass
        i += 1
    return out


def build_config(cls: type, *layers: dict, where: list[str] | None = None) -> Any:
    """Instantiate ``cls`` from merged setting dicts; an unknown key names its source and the closest field."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    merged: dict[str, Any] = {}
    for n, layer in enumerate(layers):
        for key, value in layer.items():
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1)
                src = where[n] if where else "settings"
                raise UserError(f"{src}: unknown setting '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
            merged[key] = value
    try:
        return cls(**merged)
    except UserError:
        raise
    except (TypeError, ValueError) as err:
        raise UserError(f"{cls.__name__}: {err}") from err
