"""Every field of every config class refuses a value of the wrong type where it enters, with one
line naming the field and the type it needs."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from scripts import run_script

from crossan.zoo.core.errors import ConfigError
from crossan.zoo.core.field_types import describe_type, matches_type
from crossan.zoo.features.settings import FeatureSettings
from crossan.zoo.models import architectures
from crossan.zoo.training.trainer import TrainConfig

CONFIG_CLASSES = sorted(
    {config for config, _ in architectures().values()} | {TrainConfig, FeatureSettings}, key=lambda cls: cls.__name__
)
FIELDS = [(cls, field.name) for cls in CONFIG_CLASSES for field in dataclasses.fields(cls) if field.init]


def wrong_value(annotation: object) -> object:
    """A value this annotation refuses: a number for text, text for other single types, and a set,
    which no config field takes, for unions that accept text."""
    if annotation is str:
        return 3.5
    return {"abc"} if matches_type("abc", annotation) else "abc"


@pytest.mark.parametrize(("config_class", "name"), FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FIELDS])
def test_a_wrong_type_is_one_line_naming_field_and_type(config_class: type, name: str) -> None:
    annotation = typing.get_type_hints(config_class)[name]
    with pytest.raises(ConfigError) as raised:
        config_class(**{name: wrong_value(annotation)})
    message = str(raised.value)
    assert message.startswith(f"{name} needs {describe_type(annotation)}, got ") and "\n" not in message


def test_every_config_class_is_covered() -> None:
    assert {cls.__name__ for cls in CONFIG_CLASSES} >= {
        "CrossanConfig",
        "IISANConfig",
        "SASRecIDConfig",
        "EndToEndConfig",
        "TrainConfig",
        "FeatureSettings",
    }
    assert len(FIELDS) > 60


@pytest.mark.parametrize(
    ("value", "annotation", "accepted"),
    [
        (3, float, True),
        (True, int, False),
        (True, float, False),
        (3, bool, False),
        (None, float | None, True),
        (0.5, float | None, True),
        ("a", float | None, False),
        (("a", "b"), tuple[str, ...], True),
        (("a", 1), tuple[str, ...], False),
        (["a"], tuple[str, ...], False),
        (({"k": 1},), tuple[dict[str, int], ...], True),
        (Path("."), Path, True),
        (".", Path, False),
    ],
)
def test_matching_rules(value: object, annotation: object, accepted: bool) -> None:
    assert matches_type(value, annotation) is accepted


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("lr=fast", "error: lr needs a number, got 'fast' (str)"),
        ("epochs=abc", "error: epochs needs an integer, got 'abc' (str)"),
        ("adapter_dim=abc", "error: adapter_dim needs an integer, got 'abc' (str)"),
        ("backbone_prior_weight=abc", "error: backbone_prior_weight needs a number, got 'abc' (str)"),
        ("epochs=true", "error: epochs needs an integer, got True (bool)"),
    ],
)
def test_train_command_refuses_a_wrong_type_in_one_line(option: str, message: str) -> None:
    result = run_script("train", "--preset", "crossan-t", "--set", option)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message]
