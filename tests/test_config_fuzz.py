"""Hypothesis fuzzing of the config parser: any input is a config or a ConfigError."""

import dataclasses
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metarec.config import from_mapping, load_yaml
from metarec.errors import ConfigError, MetarecError
from metarec.options import apply_override
from train.meta_train import TrainConfig

FIELDS = [field.name for field in dataclasses.fields(TrainConfig)]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["name", "rank", "inner_lr", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)
mappings = st.dictionaries(st.sampled_from(FIELDS + ["epoch", "metaa"]), values, max_size=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mappings)
def test_any_mapping_is_a_config_or_a_config_error(mapping):
    try:
        config = from_mapping(TrainConfig, mapping)
    except ConfigError as err:
        assert "\n" not in str(err)  # one line for the CLI to print
        return
    # the resolved config (what `metarec config show` prints) reads back as the same config
    resolved = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    assert from_mapping(TrainConfig, resolved) == config


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_override_is_applied_or_refused_with_its_text(assignment):
    config = {"meta": {"inner_lr": 0.1}}
    try:
        apply_override(config, assignment)
    except MetarecError as err:
        assert repr(assignment)[1:-1][:10] in str(err) or "--set" in str(err)
        return
    except yaml.YAMLError:
        pytest.fail(f"YAML error escaped for {assignment!r}")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
def test_any_config_file_is_a_mapping_or_a_config_error(tmp_path, content):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    try:
        assert isinstance(load_yaml(path), dict)
    except ConfigError as err:
        assert str(err).startswith(str(path))
