"""How Dodo reads YAML (dodo._yaml): YAML 1.1's base-60 numbers stay text, so a typed setting refuses
them by name instead of taking `1:30` as 90 (data-loss probe, round four)."""
from __future__ import annotations

import pytest

from cli_helpers import refused, synthetic_preprocessed, tiny_train_config
from dodo._yaml import safe_load


@pytest.mark.parametrize("text, value", [
    ("1:30", "1:30"), ("-1:30", "-1:30"), ("1:30.5", "1:30.5"), ("12:00:00", "12:00:00"),
    # the forms that stay numbers, as PyYAML reads them
    ("90", 90), ("-3", -3), ("0x1f", 31), ("1_000", 1000), ("2.5", 2.5), ("1.0e-3", 0.001), (".inf", float("inf")),
])
def test_base_sixty_numbers_stay_text_and_other_numbers_are_numbers(text, value):
    read = safe_load(f"key: {text}\n")["key"]
    assert read == value and type(read) is type(value)


def test_a_training_config_with_epochs_written_as_a_time_is_refused_naming_the_key(capsys, tmp_path):
    table = synthetic_preprocessed(tmp_path, cells=200)
    config = tiny_train_config(tmp_path, table)
    config.write_text(config.read_text().replace("epochs: 1,", "epochs: 1:30,"))
    assert "1:30" in config.read_text()
    refused(capsys, ["train", "--config", str(config)], "epochs")
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").glob("*.pt"))
