"""Config schema validation: the default passes, a wrong key or value is named in the error."""
import copy

import pytest
import yaml

from ntkbench.config import ConfigError, experiment_kglm, experiment_seeds, load_config, validate_config


@pytest.fixture()
def default_config():
    with open("config.yaml") as fh:
        return yaml.safe_load(fh)


def test_default_config_is_valid_and_gets_defaults(default_config):
    cfg = validate_config(default_config)
    assert cfg["device"] == "auto"
    assert cfg["resources"]["kernels"]["threads"] >= 1
    assert cfg["kernel_options"]["proj_type"] in ("gaussian", "rademacher")
    # Validation never mutates the caller's dict.
    assert "kernel_options" in default_config


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda c: c.update(kernel_opts={}), "<top level>: unknown key(s): 'kernel_opts'"),
        (lambda c: c["experiments"]["digits2-mlp"]["train"].update(lr=-1.0),
         "experiments.digits2-mlp.train.lr"),
        (lambda c: c["experiments"]["digits2-mlp"].update(kernels=["trntk", "fancy"]),
         "experiments.digits2-mlp.kernels.1"),
        (lambda c: c["kernel_options"].update(proj_dim=0), "kernel_options.proj_dim"),
        (lambda c: c["kglm"].update(target="guesses"), "kglm.target"),
        (lambda c: c.update(device="tpu"), "device"),
        (lambda c: c["experiments"]["digits2-cnn"]["data"].update(name="imagenet"),
         "experiments.digits2-cnn.data.name"),
    ],
)
def test_bad_config_names_the_key(default_config, edit, expected):
    bad = copy.deepcopy(default_config)
    edit(bad)
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    assert expected in str(err.value)


def test_per_experiment_overrides(default_config):
    cfg = copy.deepcopy(default_config)
    cfg["experiments"]["digits2-cnn"]["kglm"] = {"alpha": 0.01}
    cfg["experiments"]["digits2-cnn"]["seeds"] = [7]
    cfg = validate_config(cfg)
    assert experiment_kglm(cfg, "digits2-cnn")["alpha"] == 0.01
    assert experiment_kglm(cfg, "digits2-mlp")["alpha"] == cfg["kglm"]["alpha"]
    assert experiment_seeds(cfg, "digits2-cnn") == [7]
    assert experiment_seeds(cfg, "digits2-mlp") == cfg["seeds"]


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_experiment_kglm_overrides_only_the_keys_it_sets():
    from ntkbench.config import experiment_kglm, validate_config

    exp = {"data": {"name": "digits"}, "model": {"name": "mlp"}, "train": {}, "kernels": ["trntk"]}
    cfg = validate_config({"kglm": {"target": "predictions", "alpha": 0.5},
                           "experiments": {"a": {**exp, "kglm": {"alpha": 1e-2}}, "b": exp}})
    assert experiment_kglm(cfg, "a")["target"] == "predictions"  # not the schema default "labels"
    assert experiment_kglm(cfg, "a")["alpha"] == 1e-2 and experiment_kglm(cfg, "b")["alpha"] == 0.5
    assert experiment_kglm(cfg, "b")["class_weight"] == "balanced"  # the global block keeps its defaults


def test_schema_ships_inside_the_package():
    """An installed ntkbench (not a checkout) reads its schema with importlib.resources; the
    built wheel is checked end to end by `make wheel-test` (ci/wheel/wheel_test.sh)."""
    import tomllib
    from pathlib import Path

    import ntkbench
    from ntkbench.config import SCHEMA_RESOURCE, load_schema

    package = Path(ntkbench.__file__).resolve().parent
    schema = Path(str(SCHEMA_RESOURCE)).resolve()
    assert schema.is_file() and schema.is_relative_to(package)
    pyproject = tomllib.loads((package.parent / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["ntkbench"]
    assert any(schema.relative_to(package).match(pattern) for pattern in data)
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ntkbench.__version__"}
    assert load_schema()["title"] == "ntkbench workflow configuration"


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["attribution"].update(experiments=["digits2-mlp", "nope"]),
     "attribution.experiments: 'nope' is not an experiment"),
    (lambda c: c["attribution"].update(seed=99), "attribution.seed: 99 is not a training seed of 'digits2-mlp'"),
    (lambda c: c["attribution"].update(published={"mnist10-lr": {"trak-1": 0.41}}),
     "attribution.published: 'mnist10-lr' is not one of attribution.experiments"),
])
def test_attribution_cross_checks_name_the_key(default_config, edit, expected):
    """Checked at validation, beside the other cross-checks (not only when the rules load)."""
    bad = copy.deepcopy(default_config)
    edit(bad)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        validate_config(bad)


def test_attribution_seed_defaults_to_the_first_training_seed(default_config):
    from ntkbench.config import attribution_seed

    cfg = validate_config(default_config)
    assert attribution_seed(cfg, "digits2-mlp") == experiment_seeds(cfg, "digits2-mlp")[0]
    cfg["attribution"]["seed"] = experiment_seeds(cfg, "digits2-mlp")[-1]
    assert attribution_seed(cfg, "digits2-mlp") == experiment_seeds(cfg, "digits2-mlp")[-1]


def test_library_defaults_are_the_schemas():
    """One default per setting: the attribution functions take theirs from the schema."""
    import inspect

    from ntkbench.attribution import benchmark, gradients, methods
    from ntkbench.config import schema_default

    trak = {"proj_dim": schema_default("attribution", "trak", "proj_dim"),
            "proj_seed": schema_default("attribution", "trak", "proj_seed"),
            "proj_type": schema_default("attribution", "trak", "proj_type"),
            "ridge": schema_default("attribution", "trak", "ridge"),
            "trak_ensemble": schema_default("attribution", "trak", "ensemble"),
            "num_checkpoints": schema_default("attribution", "num_checkpoints"),
            "batch_size": schema_default("attribution", "batch_size")}
    checked = 0
    for fn in (benchmark.gradient_attributions, benchmark.checkpointed_run, methods.gradient_method_scores,
               methods.gradient_method_self_influence, methods.trak_features, methods.trak_scores,
               methods.trak_self_influence, gradients.per_sample_grads, gradients.projected_grads):
        for name, param in inspect.signature(fn).parameters.items():
            if name in trak and param.default is not inspect.Parameter.empty:
                assert param.default == trak[name], f"{fn.__qualname__}({name}={param.default!r})"
                checked += 1
    assert checked >= 15
    with pytest.raises(KeyError, match="attribution.trak.nope"):
        schema_default("attribution", "trak", "nope")
