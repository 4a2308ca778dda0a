"""Loading the typed run configuration (schemas.config): a YAML file plus dotted command-line
overrides, validated before any work; and the reference table of every field, which the README
lists.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from schemas.config import RunConfig
from schemas.errors import PipelineError


class ConfigError(PipelineError):
    """A configuration problem, phrased as one line that names the key."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=VALUE` with VALUE parsed as YAML, so `k=16`, `x=true` and `l=["a","b"]` get their types."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value is not valid YAML ({exc.problem})") from None
    return path, value


def _apply(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a section")
        node = child
    node[path[-1]] = value


def _describe(error: dict[str, Any]) -> str:
    if not error["loc"]:
        return str(error["msg"]).removeprefix("Value error, ")
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {error['msg']}{shown}"


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    for text in overrides:
        key_path, value = parse_override(text)
        _apply(tree, key_path, value)
    return validate_config(tree, origin=str(path))


def validate_config(tree: dict[str, Any], origin: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(f"{origin}: {_describe(first)}{suffix}") from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _type_name(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if type(None) in args:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + ", optional"
    if isinstance(annotation, type) and not args:
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def config_reference(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Markdown table rows (key, type, default, description) of every leaf key, in order."""
    rows = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(config_reference(annotation, f"{key}."))
            continue
        item = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
        if isinstance(item, type) and issubclass(item, BaseModel):
            rows.append(f"| `{key}` | list | `[]` | {info.description} Each entry: |")
            rows.extend(config_reference(item, f"{key}[]."))
            continue
        if info.is_required():
            default = "required"
        else:
            value = info.get_default(call_default_factory=True)
            default = "unset" if value is None else f"`{json.dumps(value)}`"
        rows.append(f"| `{key}` | {_type_name(annotation)} | {default} | {info.description} |")
    return rows
