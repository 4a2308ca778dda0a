"""Loading the typed run configuration (schemas.config): a YAML file plus dotted command-line
overrides, validated before any work, with the sections that the command run needs; and the
reference table of every field, which the README lists.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from schemas.config import VLM_BACKENDS, RunConfig
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


# Sections the model leaves optional because some commands do without them, and the commands that need each.
COMMAND_NEEDS = {
    "pool": {"models.clap": "CLAP embeds every clip"},
    "sonify": {"models.clap": "CLAP embeds the concept texts"},
}


def _vlm_backend_in(loc: list) -> str | None:
    """The backend tag pydantic puts in the location of an error inside a models.vlm entry (taken out of `loc`)."""
    if loc[:2] == ["models", "vlm"] and len(loc) > 3 and loc[3] in VLM_BACKENDS:
        return loc.pop(3)
    return None


def _describe(error: dict[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message
    loc = list(error["loc"])
    backend = _vlm_backend_in(loc)
    key = ".".join(str(p) for p in loc)
    of_backend = f" of backend {backend}" if backend else ""
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key{of_backend}"
    if error["type"] in ("missing", "union_tag_not_found"):
        key += ".backend" if error["type"] == "union_tag_not_found" else ""
        return f"{key}: required key is missing{f' (backend {backend})' if backend else ''}"
    if error["type"] == "union_tag_invalid":
        return f"{key}.backend: {error['ctx']['tag']!r} is not one of {', '.join(VLM_BACKENDS)}"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {message}{shown}"


def check_command_needs(config: RunConfig, command: str, origin: str = "config") -> RunConfig:
    """`config` if it holds every section `command` needs, else a ConfigError naming the first missing one."""
    for key, why in COMMAND_NEEDS.get(command, {}).items():
        section, name = key.split(".")
        if getattr(getattr(config, section), name) is None:
            raise ConfigError(f"{origin}: {key}: required by `{command}` ({why}), and not set")
    return config


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), command: str | None = None) -> RunConfig:
    """The config in the YAML file at `path` with `overrides` applied; with a `command`, also checked
    to hold what that command needs."""
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
    config = validate_config(tree, origin=str(path))
    return check_command_needs(config, command, str(path)) if command else config


def validate_config(tree: dict[str, Any], origin: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        # An unknown key first: a misspelt key also makes the key it was meant to be missing.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = errors[0]
        more = len(errors) - 1
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


def _sections_in(annotation: Any) -> list[type[BaseModel]]:
    """The config sections an annotation holds: itself, or the members of a (discriminated or optional) union."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    members = [a for a in typing.get_args(annotation) if a is not type(None)]
    if members and all(isinstance(a, type) and issubclass(a, BaseModel) for a in members):
        return members
    return []


def config_reference(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Markdown table rows (key, type, default, description) of every leaf key, in order."""
    rows = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = info.annotation
        sections = _sections_in(annotation)
        if len(sections) == 1:
            if not info.is_required() and info.get_default(call_default_factory=True) is None:
                rows.append(f"| `{key}` | section, optional | unset | {info.description} |")
            rows.extend(config_reference(sections[0], f"{key}."))
            continue
        entries = _sections_in(typing.get_args(annotation)[0]) if typing.get_origin(annotation) is list else []
        if len(entries) == 1:
            rows.append(f"| `{key}` | list | `[]` | {info.description} Each entry: |")
            rows.extend(config_reference(entries[0], f"{key}[]."))
            continue
        if entries:
            tags = [typing.get_args(e.model_fields["backend"].annotation)[0] for e in entries]
            rows.append(f"| `{key}` | list | `[]` | {info.description} Each entry, by backend: |")
            for tag, entry in zip(tags, entries):
                rows.extend(config_reference(entry, f"{key}[{tag}]."))
            continue
        if info.is_required():
            default = "required"
        else:
            value = info.get_default(call_default_factory=True)
            default = "unset" if value is None else f"`{json.dumps(value)}`"
        rows.append(f"| `{key}` | {_type_name(annotation)} | {default} | {info.description} |")
    return rows
