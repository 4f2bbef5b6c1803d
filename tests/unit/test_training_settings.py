"""The trainer's settings are declared once (issue 20): flags generated from the fields, each field naming a
field of the dataclass whose default it keeps."""

import dataclasses

import pytest

from training.cli import build_parser, configs
from training.model.config import ModelConfig
from training.run import RunOptions
from training.settings import GROUPS, TrainSettings, fields_of, settings_from_args
from training.train import TrainConfig

TARGETS = {"data": RunOptions, "output": RunOptions, "model": ModelConfig, "train": TrainConfig}


def test_every_field_is_in_one_group_and_names_a_field_of_its_dataclass() -> None:
    grouped = [name for g in GROUPS for name in fields_of(g)]
    assert sorted(grouped) == sorted(TrainSettings.model_fields)  # each field in exactly one group
    for group, cls in TARGETS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(fields_of(group)) <= names, (group, set(fields_of(group)) - names)
    assert all(f.default is None and f.description for f in TrainSettings.model_fields.values())


def test_flags_are_generated_from_the_settings_and_unset_ones_keep_the_dataclass_defaults(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TrainSettings.model_fields:
        monkeypatch.delenv(f"BIGRU_TRAIN_{name.upper()}", raising=False)
    p = build_parser()
    flags = {a.dest for a in p._actions}  # noqa: SLF001  (argparse has no public list of actions)
    assert set(TrainSettings.model_fields) <= flags
    s = settings_from_args(p.parse_args(["--hidden", "8", "--no-refit", "--schedule", "cosine", "--pooling", "mean"]))
    model, tcfg = configs(s)
    assert model == {"hidden": 8, "pooling": ("mean",)} and s.group("data") == {"refit": False}
    assert isinstance(tcfg, TrainConfig) and tcfg.schedule == "cosine" and tcfg.lr == TrainConfig().lr
    with pytest.raises(SystemExit):
        p.parse_args(["--schedule", "linear"])  # choices come from the Literal
    monkeypatch.setenv("BIGRU_TRAIN_LR", "0.01")
    _, tcfg = configs(settings_from_args(p.parse_args([])))
    assert isinstance(tcfg, TrainConfig) and tcfg.lr == 0.01
