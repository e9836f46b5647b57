"""Workflow configuration: JSON-schema validation with messages that name the bad key."""
from __future__ import annotations

import copy
import functools
import json
import math
import numbers
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ntkbench.kinds import kind_info

# The schema ships inside the package (read with importlib.resources), so an installed ntkbench
# validates configs without a checkout; the workflow validates against the same file.
SCHEMA_RESOURCE = resources.files("ntkbench") / "resources" / "config.schema.yaml"

__all__ = [
    "ConfigError",
    "StrictLoader",
    "load_yaml",
    "check_config_files",
    "load_schema",
    "schema_default",
    "attribution_seed",
    "validate_config",
    "load_config",
    "experiment_kglm",
    "experiment_seeds",
    "analysis_experiments",
    "experiment_analysis",
    "kernels_with_kglm",
    "modadd_experiment_config",
    "modadd_min_top_k",
    "is_prime",
]

# Result directories of the workflow that an experiment name must not take over.
RESERVED_NAMES = ("logs", "benchmarks")


class ConfigError(ValueError):
    """The workflow configuration is invalid; the message names the key and the problem."""


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key written twice in one mapping is an error.

    Plain YAML loaders keep the later value silently, so an edited copy of a setting (say a
    second ``proj_dim:`` further down a block) would win or lose unnoticed. Keys merged in with
    ``<<: *anchor`` may still be overridden: that is what a merge key means.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            self.check_unique_keys(node, deep)
        return super().construct_mapping(node, deep=deep)

    def check_unique_keys(self, node: yaml.MappingNode, deep: bool = False) -> None:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: construct_mapping reports it
                continue
            if first is not key_node.start_mark:
                mark = key_node.start_mark
                raise ConfigError(
                    f"{mark.name}:{mark.line + 1}: duplicate key {key!r} (first at line {first.line + 1}); "
                    "YAML would silently keep only the later value. Remove or rename one of them")


def load_yaml(path: str | Path) -> Any:
    """Read a YAML (or JSON) file with :class:`StrictLoader`: a duplicate key is a
    :class:`ConfigError` naming the key, the file and the line."""
    path = Path(path)
    if path.suffix == ".json":  # Snakemake accepts JSON config files too
        with open(path, encoding="utf-8") as fh:
            return json.load(fh, object_pairs_hook=lambda pairs: _unique_json_pairs(pairs, path))
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def _unique_json_pairs(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"{path}: duplicate key {key!r}; JSON readers silently keep only the later "
                              "value. Remove or rename one of them")
        out[key] = value
    return out


def check_config_files(paths: Any) -> None:
    """Refuse config files with a duplicate key (see :class:`StrictLoader`).

    Snakemake parses its config files itself, with a loader that lets the later of two equal
    keys win; the workflow calls this on ``workflow.configfiles`` before validating ``config``.
    """
    for path in paths:
        load_yaml(path)


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    """The config schema: the packaged ``ntkbench/resources/config.schema.yaml`` unless ``path``."""
    if path is not None:
        return load_yaml(path)
    with resources.as_file(SCHEMA_RESOURCE) as packaged:
        return load_yaml(packaged)


@functools.lru_cache(maxsize=1)
def packaged_schema() -> dict[str, Any]:
    """The packaged schema, read once (do not mutate it: :func:`load_schema` gives a copy)."""
    return load_schema()


def schema_default(*keys: str) -> Any:
    """The schema's default of the setting at ``keys`` (e.g. ``("attribution", "trak",
    "proj_dim")``): library functions take their defaults from here, so that each default is
    written once, in the schema. A KeyError names a path with no default."""
    node = packaged_schema()
    for i, key in enumerate(keys):
        props = node.get("properties", {})
        if key not in props:
            raise KeyError(f"config schema has no setting {'.'.join(keys[: i + 1])}")
        node = props[key]
    if "default" not in node:
        raise KeyError(f"config schema setting {'.'.join(keys)} has no default")
    return copy.deepcopy(node["default"])


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


def _is_integer(checker: Any, instance: Any) -> bool:  # noqa: ARG001 - jsonschema's signature
    # JSON schema counts 1.0e12 as an integer; the code needs an int (range(), shapes, seeds),
    # and a float there is usually a YAML spelling slip, so only ints count.
    return isinstance(instance, int) and not isinstance(instance, bool)


_VALIDATOR = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer))


def _type_message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message for a wrong type, with the likely YAML slip named."""
    types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    value = error.instance
    if "integer" in types and isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return (f"{value!r} is a float, not an integer; write it without a decimal point or "
                    f"exponent ({int(value)})")
        return f"{value!r} is not an integer"
    if {"integer", "number"} & set(types) and isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return error.message
        return (f"{value!r} is a string, not a number (YAML reads an exponent without a decimal point, "
                "such as 1e12, as text); write the number out, or as 1.0e+12 where a float is meant")
    return error.message


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def validate_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``config``; return a copy with schema defaults filled in.

    Raises :class:`ConfigError` listing every problem as ``key.path: message``.
    """
    schema = load_schema() if schema is None else schema
    if not isinstance(config, dict):
        raise ConfigError(f"invalid configuration: expected a mapping of keys, got {type(config).__name__}")
    base = _VALIDATOR
    # JSON schema's "number" admits .inf and .nan (YAML has both); no setting means either.
    non_finite = _non_finite_numbers(config)
    lines = [f"  {path}: {value!r} is not a finite number" for path, value in non_finite]
    skip = {path for path, _ in non_finite}
    for err in sorted(base(schema).iter_errors(config), key=lambda e: list(e.absolute_path)):
        if _key_path(err) in skip:
            continue  # already reported as non-finite
        msg = err.message
        if err.validator == "additionalProperties":
            msg = f"unknown key(s): {msg.split('(')[-1].rstrip(')')}"
        elif err.validator == "not" and err.validator_value == {}:  # schema: key of another data set
            msg = "does not apply to this data set (see data: in ntkbench/resources/config.schema.yaml)"
        elif err.validator == "type":
            msg = _type_message(err)
        lines.append(f"  {_key_path(err)}: {msg}")
    if lines:
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))
    filled = copy.deepcopy(dict(config))
    _with_defaults(base)(schema).validate(filled)
    # An experiment's kglm block overrides the global one key by key, so it keeps only the keys
    # the user set: the schema's defaults there would silently undo the global settings.
    for name, exp in (config.get("experiments") or {}).items():
        if "kglm" in exp:
            filled["experiments"][name]["kglm"] = copy.deepcopy(exp["kglm"])
    lines = [f"  {line}" for line in _cross_checks(filled)]
    if lines:
        raise ConfigError("invalid configuration:\n" + "\n".join(lines))
    return filled


def _non_finite_numbers(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, float]]:
    """(key path, value) of every NaN or infinite number anywhere in ``value``."""
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in _non_finite_numbers(v, (*path, str(k)))]
    if isinstance(value, (list, tuple)):
        return [hit for i, v in enumerate(value) for hit in _non_finite_numbers(v, (*path, str(i)))]
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value):
        return [(".".join(path) if path else "<top level>", float(value))]
    return []


def is_prime(n: int) -> bool:
    """Trial division (moduli here are small)."""
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def modadd_min_top_k(p: int) -> int:
    """Eigenpairs the modular-addition report needs for modulus ``p``: the top mode, cliff 1 and
    cliff 2 of 2(p−1) modes each (``ntkbench.spectral.modadd.expected_cliffs``) and one more
    eigenvalue for the drop after cliff 2, i.e. 1 + 4(p−1) + 1 = 4p − 2."""
    return 4 * p - 2


def modadd_experiment_config(modadd_cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """Settings of one modular-addition experiment: the block's shared values, overridden by
    the experiment's own entry (p, width, train_fraction, seeds, epochs, ...)."""
    exps = modadd_cfg["experiments"]
    if name not in exps:
        raise KeyError(f"spectral.modadd.experiments has no experiment {name!r} (has {sorted(exps)})")
    merged = {k: v for k, v in modadd_cfg.items() if k != "experiments"}
    merged.update(exps[name] or {})
    return merged


def _cross_checks(cfg: dict[str, Any]) -> list[str]:
    """What the schema cannot say: something to run, unique names, modular-addition relations."""
    spectral = cfg.get("spectral") or {}
    tasks = [t for t in ("tms", "modadd", "modadd_tf") if spectral.get(t) is not None]
    if not cfg.get("experiments") and not tasks:
        return ["<top level>: nothing to run: `experiments` is empty or absent and there is no "
                "`spectral.tms` or `spectral.modadd` block; add an experiment or a spectral block"]
    problems = []
    owners: dict[str, list[str]] = {}
    for name in cfg.get("experiments") or {}:
        owners.setdefault(name, []).append(f"experiments.{name}")
    if "tms" in tasks:
        owners.setdefault(spectral["tms"]["experiment"], []).append("spectral.tms.experiment")
    if "modadd" in tasks:
        for name in spectral["modadd"]["experiments"]:
            owners.setdefault(name, []).append(f"spectral.modadd.experiments.{name}")
    if "modadd_tf" in tasks:
        for name in spectral["modadd_tf"]["experiments"]:
            owners.setdefault(name, []).append(f"spectral.modadd_tf.experiments.{name}")
    for name, keys in owners.items():
        if len(keys) > 1:
            problems.append(f"{keys[0]}: the name {name!r} is also used by {', '.join(keys[1:])}; "
                            f"each experiment writes to results/{name}/, so names must be unique")
        if name in RESERVED_NAMES:
            problems.append(f"{keys[0]}: {name!r} is reserved for results/{name}/; choose another name")
    if "modadd" in tasks:
        problems += _modadd_checks(spectral["modadd"])
    if "modadd_tf" in tasks:
        problems += _modadd_tf_checks(spectral["modadd_tf"])
    problems += _analysis_checks(cfg)
    problems += _attribution_checks(cfg)
    problems += _leaderboard_checks(cfg)
    kopts = cfg.get("kernel_options") or {}
    if kopts.get("tile_size") is not None and kopts["tile_size"] % kopts["block_size"]:
        problems.append(f"kernel_options.tile_size: {kopts['tile_size']} must be a multiple of kernel_options.block_size "
                        f"({kopts['block_size']}), so that tiles hold whole blocks")
    problems += _projection_memory_checks(cfg)
    return problems


# What the memory check needs to know of each data set without loading it: (classes, training
# points of the standard files, training points of their smallest class). MNIST's smallest
# class is 5 (5421 images); digits has 1797 images, 174 in its smallest class (8), before its
# train/test split; CoLA's count depends on which release is present, so none is assumed.
_DATA_SIZES: dict[str, tuple[int, int | None, int | None]] = {
    "mnist": (10, 60000, 5421),
    "fmnist": (10, 60000, 6000),
    "cifar10": (10, 50000, 5000),
    "digits": (10, None, 174),
    "cola": (2, None, None),
}


def _min_train_points(spec: dict[str, Any]) -> tuple[int, str]:
    """A lower bound on the training points of an experiment's data block, and its reason."""
    name = spec["name"]
    num_classes, total, smallest = _DATA_SIZES.get(name, (2, None, None))
    classes = len(spec["classes"]) if spec.get("classes") else num_classes
    if spec.get("per_class_train") is not None:  # the loaders refuse a class with fewer
        return spec["per_class_train"] * classes, "data.per_class_train x classes"
    if name == "digits":
        # The stratified split keeps at least floor(n_c (1 - test_fraction)) - 1 of class c
        # (checked for every test_fraction on a 0.005 grid); max_train only lowers it.
        per_class = math.floor(smallest * (1 - spec.get("test_fraction", 0.3))) - 1
        n = per_class * classes
        if spec.get("max_train") is not None and spec["max_train"] < n:
            return spec["max_train"], "data.max_train"
        return max(1, n), f"at least {per_class} per class in the digits training split"
    for key in ("max_train", "first_train"):  # the image and text loaders refuse a larger one
        if spec.get(key) is not None:
            return spec[key], f"data.{key}"
    if total is None:
        return 1, "the data set's size is not known before loading"
    if spec.get("classes"):
        return smallest * classes, f"at least {smallest} per class in the standard {name} files"
    return total, f"the standard {name} training split"


def _projection_memory_checks(cfg: dict[str, Any]) -> list[str]:
    """Refuse a ``kernel_options.proj_dim`` whose projected features cannot fit a kernel job.

    Every job of a projected kernel holds the projected gradients of one block of training
    points: rows x C' x K values, rows = min(block_size, training points), C' = 1 for the pNTK
    kinds (summed over classes), else the network's outputs (1 for a binary task). That is a
    lower bound of its memory (it also holds a second block, R's tiles, the network), compared
    with ``resources.kernels.mem_mb``, so that a too large K fails here and not, out of memory,
    hours into a kernel job. R's tiles do not grow with K (``TILE_K`` rows at a time), so they
    are left out. ``kronecker`` is skipped: its features stop growing at the model's parameter
    count, which is not known before the model is built."""
    kopts = cfg.get("kernel_options") or {}
    if kopts.get("proj_type", "gaussian") == "kronecker" or not cfg.get("experiments"):
        return []
    proj_dim, block_size = kopts.get("proj_dim", 10240), kopts.get("block_size", 2048)
    itemsize = 8 if kopts.get("dtype") == "float64" else 4
    budget_mb = ((cfg.get("resources") or {}).get("kernels") or {}).get("mem_mb", 2000)
    worst = None
    for name, exp in cfg["experiments"].items():
        kinds = [kind_info(k) for k in exp.get("kernels", []) if kind_info(k).projected]
        if not kinds:
            continue
        n_min, why = _min_train_points(exp["data"])
        classes = len(exp["data"]["classes"]) if exp["data"].get("classes") else _DATA_SIZES.get(
            exp["data"]["name"], (2,))[0]
        outputs = 1 if classes == 2 else classes  # one logit for a binary task (DataBundle.num_outputs)
        widths = {k.name: 1 if k.sum_over_classes else outputs for k in kinds}  # C' per kind
        kind = max(widths, key=widths.get)
        width = widths[kind]
        rows = min(block_size, n_min)
        need = rows * width * proj_dim * itemsize  # Python ints: no overflow however large K is
        if worst is None or need > worst[0]:
            reason = "kernel_options.block_size" if rows == block_size else why
            worst = (need, name, kind, rows, reason, width)
    if worst is None or worst[0] <= budget_mb << 20:
        return []
    need, name, kind, rows, reason, width = worst
    return [f"kernel_options.proj_dim: K = {proj_dim:,} needs at least {need:,} bytes ({need / 2**30:,.1f} GiB) "
            f"in every {kind} kernel job of experiment {name!r}: the projected gradients of one block of "
            f"{rows:,} training points ({reason}) x {width} output(s) x K x {itemsize} bytes "
            f"({kopts.get('dtype', 'float32')}), more than resources.kernels.mem_mb = {budget_mb} MB. Lower "
            "kernel_options.proj_dim (or kernel_options.block_size), or raise resources.kernels.mem_mb"]


def _attribution_checks(cfg: dict[str, Any]) -> list[str]:
    """The attribution benchmark's experiments exist, and its seed is one the DAG trains."""
    block = cfg.get("attribution") or {}
    experiments = cfg.get("experiments") or {}
    problems = []
    for exp in block.get("experiments") or []:
        if exp not in experiments:
            problems.append(f"attribution.experiments: {exp!r} is not an experiment (has {sorted(experiments)})")
        elif block.get("seed") is not None and block["seed"] not in experiment_seeds(cfg, exp):
            problems.append(f"attribution.seed: {block['seed']} is not a training seed of {exp!r} "
                            f"({experiment_seeds(cfg, exp)}); the attributed network must be one the DAG trains")
    trak = block.get("trak") or {}
    ensemble = trak.get("ensemble", 1)
    largest = max(ensemble) if isinstance(ensemble, list) else ensemble
    if trak.get("ensemble_data") == "subsets":
        if largest > block.get("num_subsets", 0):
            problems.append(f"attribution.trak.ensemble: {largest} subset networks, but attribution.num_subsets is "
                            f"{block.get('num_subsets')}")
        if block.get("mislabel") is not None:
            problems.append("attribution.trak.ensemble_data: subsets has no noisy-label twin of the subset networks; "
                            "set attribution.mislabel: null (no mislabel AUC) or ensemble_data: full")
    for exp in block.get("published") or {}:
        if exp not in (block.get("experiments") or []):
            problems.append(f"attribution.published: {exp!r} is not one of attribution.experiments "
                            f"({block.get('experiments')})")
    return problems


def _leaderboard_checks(cfg: dict[str, Any]) -> list[str]:
    """The leaderboard's experiments exist, and each poisoned twin has a forensics block."""
    experiments = cfg.get("experiments") or {}
    problems = []
    for name, spec in ((cfg.get("leaderboard") or {}).get("architectures") or {}).items():
        for role in ("experiment", "badnet"):
            exp = spec.get(role)
            if exp is not None and exp not in experiments:
                problems.append(f"leaderboard.architectures.{name}.{role}: {exp!r} is not an experiment")
            elif role == "badnet" and exp is not None and "forensics" not in experiments[exp]:
                problems.append(f"leaderboard.architectures.{name}.badnet: {exp!r} has no forensics block "
                                "(a poisoned twin needs data.poison and forensics)")
    return problems


def attribution_seed(config: dict[str, Any], experiment: str) -> int:
    """Training seed of the attribution benchmark's network of ``experiment``:
    ``attribution.seed``, or the experiment's first seed when that is null."""
    seed = config["attribution"]["seed"]
    return experiment_seeds(config, experiment)[0] if seed is None else seed


def _analysis_checks(cfg: dict[str, Any]) -> list[str]:
    """The surrogate analysis names experiments that exist, a seed they train, kernels they have."""
    block = cfg.get("analysis") or {}
    experiments = cfg.get("experiments") or {}
    problems = [f"analysis.experiments: {name!r} is not an experiment (has {sorted(experiments)})"
                for name in block.get("experiments") or [] if name not in experiments]
    for name in analysis_experiments(cfg):
        own = experiments[name].get("analysis") or {}
        key = lambda k: f"experiments.{name}.analysis.{k}" if k in own else f"analysis.{k}"  # noqa: E731
        settings = experiment_analysis(cfg, name)
        if settings["seed"] not in experiment_seeds(cfg, name):
            problems.append(f"{key('seed')}: {settings['seed']} is not a training seed of {name!r} "
                            f"({experiment_seeds(cfg, name)}); the analysed network must be one the DAG trains")
        unknown = [k for k in settings["kernels"] if k not in experiments[name]["kernels"]]
        with_kglm = kernels_with_kglm(settings["kernels"])
        blocks = [k for k in settings["kernels"] if k not in unknown and k not in with_kglm]
        if unknown:
            problems.append(f"{key('kernels')}: {unknown} are not kernels of {name!r} ({experiments[name]['kernels']})")
        if blocks:
            problems.append(f"{key('kernels')}: {blocks} have no kGLM to analyse (an (N, N, C, C) kernel)")
        if not settings["kernels"]:
            problems.append(f"analysis.experiments: {name!r} has no kernel with a kGLM to analyse")
    return problems


def _modadd_checks(modadd: dict[str, Any]) -> list[str]:
    problems = []
    if not is_prime(modadd["p"]):
        problems.append(f"spectral.modadd.p: {modadd['p']} is not a prime; the Fourier-family analysis "
                        "of modular addition needs an odd prime modulus")
    for name, own in modadd["experiments"].items():
        cfg = modadd_experiment_config(modadd, name)
        p = int(cfg["p"])
        p_key = f"spectral.modadd.experiments.{name}.p" if "p" in (own or {}) else "spectral.modadd.p"
        if not is_prime(p):
            if p_key != "spectral.modadd.p":  # the shared p is reported once, above
                problems.append(f"{p_key}: {p} is not a prime; the Fourier-family analysis of modular "
                                "addition needs an odd prime modulus")
            continue
        n_train = int(p * p * cfg["train_fraction"])  # as ntkbench.data.modadd.make_modadd_data
        if not 1 <= n_train < p * p:
            key = ("experiments." + name + "." if "train_fraction" in (own or {}) else "") + "train_fraction"
            problems.append(f"spectral.modadd.{key}: {cfg['train_fraction']} of the p² = {p * p} pairs of "
                            f"experiment {name!r} leaves an empty training split")
        need = modadd_min_top_k(p)
        blocks = (f"the top mode, cliff 1 and cliff 2 of 2(p−1) = {2 * (p - 1)} modes each and the "
                  "eigenvalue after cliff 2")
        if need > p * p:
            problems.append(f"{p_key}: p = {p} is too small: the report needs {blocks} ({need} modes), "
                            f"but the class-averaged kernel has only p² = {p * p}; use p >= 5")
            continue
        if cfg["top_k"] < need:
            problems.append(f"spectral.modadd.top_k: {cfg['top_k']} is too small for experiment {name!r} "
                            f"(p = {p}): the report needs {blocks}, so top_k >= 4p − 2 = {need}")
        vectors = cfg.get("store_vectors")
        if vectors is not None and vectors < need - 1:
            problems.append(f"spectral.modadd.store_vectors: {vectors} eigenvectors are too few for "
                            f"experiment {name!r} (p = {p}): the cliff-2 overlaps and heatmaps need the "
                            f"first 4p − 3 = {need - 1}; use null (4p + 4) or at least {need - 1}")
    return problems


def _modadd_tf_checks(block: dict[str, Any]) -> list[str]:
    """The transformer block (issue 15): a prime p, d_model divisible by heads, a non-empty
    split; no minimum top_k (its cliffs are detected, not expected at p-derived places)."""
    problems = []
    for name, own in block["experiments"].items():
        cfg = modadd_experiment_config(block, name)
        key = lambda k: f"spectral.modadd_tf.{'experiments.' + name + '.' if k in (own or {}) else ''}{k}"  # noqa: E731
        p = int(cfg["p"])
        if not is_prime(p):
            problems.append(f"{key('p')}: {p} is not a prime; the Fourier-family analysis of modular addition "
                            "needs an odd prime modulus")
        if cfg["d_model"] % cfg["heads"]:
            problems.append(f"{key('heads')}: d_model = {cfg['d_model']} of experiment {name!r} is not divisible "
                            f"by heads = {cfg['heads']}")
        if not 1 <= int(p * p * cfg["train_fraction"]) < p * p:
            problems.append(f"{key('train_fraction')}: {cfg['train_fraction']} of the p² = {p * p} pairs of "
                            f"experiment {name!r} leaves an empty split")
    return problems


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    return validate_config(load_yaml(path) or {})


def _experiment(config: dict[str, Any], experiment: str) -> dict[str, Any]:
    experiments = config.get("experiments") or {}
    if experiment not in experiments:
        raise KeyError(f"experiments has no experiment {experiment!r} (has {sorted(experiments)})")
    return experiments[experiment]


def experiment_kglm(config: dict[str, Any], experiment: str) -> dict[str, Any]:
    """kGLM settings of one experiment: the global ``kglm`` block, overridden per experiment.

    Keys are sorted, so the rule's params (compared as text by Snakemake) do not change when
    a config file is rewritten with its keys in another order.
    """
    merged = {**config.get("kglm", {}), **_experiment(config, experiment).get("kglm", {})}
    return dict(sorted(merged.items()))


def experiment_seeds(config: dict[str, Any], experiment: str) -> list[int]:
    """Training seeds of one experiment (its own ``seeds`` or the global list)."""
    return list(_experiment(config, experiment).get("seeds", config["seeds"]))


ANALYSIS_KEYS = ("seed", "kernels", "test_points", "selection_seed", "top_k")


def kernels_with_kglm(kernels: list[str]) -> list[str]:
    """The kernels that have a kGLM, hence attributions (every kind but the (N, N, C, C) eNTK)."""
    return [k for k in kernels if not kind_info(k).per_class_blocks]


def analysis_experiments(config: dict[str, Any]) -> list[str]:
    """Experiments of the surrogate analysis (validated config): ``analysis.experiments``, or
    when it is null every experiment with a kernel that has a kGLM."""
    experiments = config.get("experiments") or {}
    listed = (config.get("analysis") or {}).get("experiments")
    if listed is None:
        return [name for name, spec in experiments.items() if kernels_with_kglm(spec["kernels"])]
    return [name for name in listed if name in experiments]


def experiment_analysis(config: dict[str, Any], experiment: str) -> dict[str, Any]:
    """Surrogate-analysis settings of one experiment (validated config): the top-level
    ``analysis`` block overridden key by key by the experiment's own, with ``seed`` resolved
    (null = the experiment's first training seed) and ``kernels`` resolved (null = every kernel
    of the experiment that has a kGLM). Keys :data:`ANALYSIS_KEYS`."""
    block = config.get("analysis") or {}
    merged = {key: block.get(key) for key in ANALYSIS_KEYS}
    merged.update(_experiment(config, experiment).get("analysis") or {})
    if merged["seed"] is None:
        merged["seed"] = experiment_seeds(config, experiment)[0]
    kernels = _experiment(config, experiment)["kernels"]
    merged["kernels"] = kernels_with_kglm(kernels) if merged["kernels"] is None else list(merged["kernels"])
    return merged


DEFAULT_VARIANT = "default"


def kglm_variants(kglm_cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every kGLM a (merged, validated) config ``kglm`` block asks for, by variant name.

    ``{"default": <the block without "variants">, <name>: <that with the variant's
    overrides>, ...}``; each value is ready for :meth:`KernelGLM.from_config` (plus its
    ``target``). E.g. ``variants: {student: {target: predictions}}`` adds a kGLM fitted to the
    network's predictions (Table 5) on the same kernels.
    """
    base = {k: v for k, v in kglm_cfg.items() if k != "variants"}
    variants = {DEFAULT_VARIANT: base}
    for name, override in (kglm_cfg.get("variants") or {}).items():
        if name == DEFAULT_VARIANT:
            raise ValueError(f"kglm.variants: {DEFAULT_VARIANT!r} names the settings without "
                             "overrides; pick another variant name")
        if "variants" in override:
            raise ValueError(f"kglm.variants.{name}: variants cannot be nested")
        variants[name] = {**base, **override}
    return variants


def experiment_kglm_variants(config: dict[str, Any], experiment: str) -> dict[str, dict[str, Any]]:
    """{variant: kGLM settings} of one experiment (see :func:`kglm_variants`)."""
    return {name: dict(sorted(cfg.items())) for name, cfg in kglm_variants(experiment_kglm(config, experiment)).items()}
