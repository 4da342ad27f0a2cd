"""ExperimentConfig / PreprocessConfig: defaults, validation with clear messages, directories."""
import pytest

pytest.importorskip("yaml")

from dodo.training.config import ConfigError, ExperimentConfig, PreprocessConfig


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_fill_missing_sections_and_directories_are_created(tmp_path):
    path = write(tmp_path, f"output: {{results_dir: {tmp_path}/r, checkpoint_dir: {tmp_path}/c}}\n")
    config = ExperimentConfig.load(path)
    assert config.model.head == "equivariant" and config.data.target_scale is None
    assert config.training.lr == 1e-3
    assert (tmp_path / "r").is_dir() and (tmp_path / "c").is_dir()


def test_shipped_configs_load(tmp_path, monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "training" / "configs"
    monkeypatch.chdir(tmp_path)  # their relative output directories land here
    for name in ("model.yaml", "demo_synthetic.yaml"):
        ExperimentConfig.load(root / name)
    for name in ("pre_process.yaml", "pre_process_demo.yaml"):
        PreprocessConfig.load(root / name)


@pytest.mark.parametrize("text, words", [
    ("model: {hiden_dim: 3}\n", ["model", "hiden_dim", "unknown"]),
    ("trainin: {lr: 1}\n", ["trainin", "unknown"]),
    ("training: {epochs: ten}\n", ["epochs", "integer"]),
    ("training: {lr: fast}\n", ["lr", "number"]),
    ("model: {head: fancy}\n", ["model.head", "fancy"]),
    ("model: {activation: swish}\n", ["activation", "swish"]),
    ("data: {target_scale: p50}\n", ["target_scale"]),
    ("data: {box3d: {z_method: guess}}\n", ["z_method"]),
    ("training: {amp: 3}\n", ["amp", "true/false"]),
    ("- just\n- a list\n", ["mapping"]),
])
def test_bad_configs_fail_with_a_message_naming_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as error:
        ExperimentConfig.load(write(tmp_path, text), create_dirs=False)
    for word in words:
        assert word in str(error.value)


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ExperimentConfig.load(tmp_path / "nope.yaml")


def test_numbers_written_as_strings_and_overrides(tmp_path):
    path = write(tmp_path, "training: {lr: 1e-2}\ndata: {target_scale: p99}\n")
    config = ExperimentConfig.load(path, overrides={"model.hidden_dim": 16}, create_dirs=False)
    assert config.training.lr == 0.01 and config.data.target_scale == "p99" and config.model.hidden_dim == 16


def test_preprocess_config_rejects_unknown_filter(tmp_path):
    with pytest.raises(ConfigError, match="drop_everything"):
        PreprocessConfig.load(write(tmp_path, "filters: {drop_everything: true}\n"))
