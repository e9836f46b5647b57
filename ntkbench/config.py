"""Workflow configuration: JSON-schema validation with messages that name the bad key."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"

__all__ = ["ConfigError", "load_schema", "validate_config", "load_config", "experiment_kglm"]


class ConfigError(ValueError):
    """The workflow configuration is invalid; the message names the key and the problem."""


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _with_defaults(validator_cls: type) -> type:
    """A validator class that also fills ``default`` values into the instance.

    Defaults are applied after a successful validation pass, so they never hide an error.
    """
    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001
        if isinstance(instance, dict):
            for prop, subschema in properties.items():
                if "default" in subschema and prop not in instance:
                    instance[prop] = copy.deepcopy(subschema["default"])
                elif "$ref" in subschema and prop not in instance and "default" in subschema:
                    instance[prop] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def validate_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``config``; return a copy with schema defaults filled in.

    Raises :class:`ConfigError` listing every problem as ``key.path: message``.
    """
    schema = load_schema() if schema is None else schema
    base = jsonschema.Draft202012Validator
    errors = sorted(base(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            msg = err.message
            if err.validator == "additionalProperties":
                msg = f"unknown key(s): {msg.split('(')[-1].rstrip(')')}"
            lines.append(f"  {_key_path(err)}: {msg}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))
    filled = copy.deepcopy(dict(config))
    _with_defaults(base)(schema).validate(filled)
    return filled


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    with open(path) as fh:
        return validate_config(yaml.safe_load(fh) or {})


def experiment_kglm(config: dict[str, Any], experiment: str) -> dict[str, Any]:
    """kGLM settings of one experiment: the global ``kglm`` block, overridden per experiment."""
    return {**config.get("kglm", {}), **config["experiments"][experiment].get("kglm", {})}


def experiment_seeds(config: dict[str, Any], experiment: str) -> list[int]:
    """Training seeds of one experiment (its own ``seeds`` or the global list)."""
    return list(config["experiments"][experiment].get("seeds", config["seeds"]))
