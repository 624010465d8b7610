"""Turn Hydra/OmegaConf composition errors into one ConfigError paragraph.

Hydra prints these as a few loosely related lines and exits 1. We name the key, say what the
schema expects there (type, allowed enum values, or the known keys of that node) and give the
exact override to type instead; the CLI exits 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import typing

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from safetrain.config.schema import Config
from safetrain.core.errors import ConfigError


def explain(exc: BaseException) -> ConfigError:
    cause = _omegaconf_cause(exc)
    full_key = getattr(cause, "full_key", None) if cause else None
    text = str(cause or exc).strip()
    first = text.splitlines()[0] if text else exc.__class__.__name__
    missing_group = re.search(r"Could not find '([\w/.-]+)'", str(exc))

    if missing_group:
        group, _, choice = missing_group.group(1).rpartition("/")
        options = re.findall(r"^\t(\S+)$", str(exc), flags=re.M)
        known = ", ".join(options) if options else "none"
        return ConfigError(
            f"there is no {group or 'config'} named {choice!r} in the config tree. "
            f"Known {group or 'config'}s: {known}.",
            hint=(f"use one of: {', '.join(f'{group}={o}' for o in options)}" if options
                  else "check the name and the configs/ folder"),
            config_key=group or None)

    override = _unparsed_override(exc)
    if override is not None:
        key, _, value = override.partition("=")
        quoted = f"'{key}=\"{value}\"'" if value and '"' not in value else f"'{override}'"
        return ConfigError(
            f"the override {override!r} could not be parsed ({first}): in an override, characters such as "
            f"[ ] : % , = ( ) and spaces belong to Hydra's own syntax (lists, sweeps, interpolations), "
            f"so a value that holds them must be quoted.",
            hint=f"quote the value for Hydra and the whole override for the shell: {quoted}",
            config_key=key.lstrip("+~") if value else None)

    if full_key:
        full_key = re.sub(r"\[(\d+)\]", r".\1", full_key)  # model.layers[0] -> model.layers.0
        node_path, _, leaf = full_key.rpartition(".")
        if node_path.startswith("model.layers."):
            return ConfigError(
                f"{full_key} is not set in the chosen model, so it cannot be overridden.",
                hint=f"add it with +{full_key}=VALUE (layer arguments are then checked against "
                     f"the layer's type)", config_key=full_key)
        node_type = _schema_at(node_path)
        if "not in" in first or "Key '" in first and "not" in first:
            return unknown_key(full_key)
        expected = _describe_field(node_type, leaf)
        said = "expected one of" in first.lower()
        return ConfigError(
            f"{full_key}: {first.rstrip('.')}." + (f" Expected {expected}." if expected and not said else ""),
            hint=f"set {full_key} to {expected}" if expected else f"fix the value of {full_key}",
            config_key=full_key)

    return ConfigError(f"the command-line overrides or config files could not be composed: {first}",
                       hint="check the override syntax (key=value, +key=value to add, "
                            "group=option to choose); add debug=true for the full Hydra error")


def target_refused(full_key: str) -> ConfigError:
    return ConfigError(f"{full_key} names code to import and run; safetrain configs choose components by name "
                       f"from registries and never instantiate a _target_.",
                       hint=f"remove {full_key} from the config", config_key=full_key)


def unknown_key(full_key: str) -> ConfigError:
    node_path, _, leaf = full_key.rpartition(".")
    if leaf == "_target_":
        return target_refused(full_key)
    node_type = _schema_at(node_path)
    known = [f.name for f in dataclasses.fields(node_type)] if node_type else []
    guess = difflib.get_close_matches(leaf, known, n=1)
    where = node_path or "the top level"
    return ConfigError(
        f"{full_key} is not a config key"
        + (f" (did you mean {node_path + '.' if node_path else ''}{guess[0]}?)" if guess else "")
        + f". Keys of {where}: {', '.join(known)}.",
        hint=f"use one of the keys of {where}", config_key=full_key)


def check_keys(node: DictConfig, schema=Config, prefix: str = "") -> None:
    """Refuse keys the schema lacks. Hydra lets `+trainer.foo=1` add them (it opens the struct
    flag for appends), and OmegaConf.to_object would then drop them silently."""
    known = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in node.keys():
        full = f"{prefix}{key}"
        if key == "_target_":  # from a YAML file; the command line is checked in cli.main
            raise target_refused(full)
        if key not in known:
            raise unknown_key(full)
        child_type = hints[key]
        if dataclasses.is_dataclass(child_type):
            check_keys(node[key], child_type, full + ".")


def _omegaconf_cause(exc: BaseException) -> OmegaConfBaseException | None:
    seen = exc
    while seen is not None:
        if isinstance(seen, OmegaConfBaseException):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _schema_at(path: str):
    node = Config
    for part in filter(None, path.split(".")):
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        node = hints.get(part)
        if node is None or not dataclasses.is_dataclass(node):
            return None
    return node


def _describe_field(node_type, leaf: str) -> str:
    if node_type is None:
        return ""
    hint = typing.get_type_hints(node_type).get(leaf)
    if hint is None:
        return ""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = args[0]
    suffix = " or null" if type(None) in typing.get_args(hint) else ""
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return "one of: " + ", ".join(m.name for m in base) + suffix
    name = getattr(base, "__name__", str(base))
    return {"int": "an integer", "float": "a number", "bool": "true or false",
            "str": "a string"}.get(name, name) + suffix


def _unparsed_override(exc: BaseException) -> str | None:
    """The command-line override Hydra's parser refused (OverrideParseException), if that is the error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if exc.__class__.__name__ == "OverrideParseException" and isinstance(getattr(exc, "override", None), str):
            return exc.override
        exc = exc.__cause__ or exc.__context__
    return None
