"""Fuzzing campaign 2026-12-06 (fuzz/README.md): the seed corpora that bring the default model's
native evaluator ("dodo.native_network") to fuzz_loader and fuzz_metadata. fuzz/make_seeds.py edits
that metadata entry in the ONNX protobuf with a reader of its own (standard library only); a seed
that silently lost its entry, or a model the reader rewrote, would leave the native evaluator
unfuzzed without any failure."""
from __future__ import annotations

from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "python" / "dodo" / "models" / "qke_default.onnx"
KEY = "dodo.native_network"


def test_the_default_models_native_entry_is_read_and_written_back_byte_for_byte(make_seeds):
    data = DEFAULT_MODEL.read_bytes()
    native = make_seeds.metadata_value(data, KEY)
    assert native.startswith(b'{"form": "silu-mlp-density-residual-v2"')
    assert make_seeds.with_metadata_value(data, KEY, native) == data
    tampered = make_seeds.with_metadata_value(data, KEY, b'{"form": 1}')
    assert make_seeds.metadata_value(tampered, KEY) == b'{"form": 1}'
    for other in ("dodo.box3d", "dodo.head", "dodo.content_sha256"):  # every other entry kept
        assert make_seeds.metadata_value(tampered, other) == make_seeds.metadata_value(data, other) != b""


def test_every_native_seed_is_written_and_tampers_with_the_entry(make_seeds, tmp_path):
    make_seeds.main([str(tmp_path)])
    native = make_seeds.metadata_value(DEFAULT_MODEL.read_bytes(), KEY)
    variants = make_seeds.native_variants(native)
    assert len(variants) >= 8
    for name, value in variants.items():
        assert (name == "native") == (value == native), name  # each variant changes the entry
        metadata_seed = (tmp_path / "metadata" / name).read_bytes()
        assert metadata_seed.split(b"\xff", 6)[6] == value  # fuzz_metadata's seventh value
        if name != "native":
            loader_seed = (tmp_path / "loader" / f"qke_default_{name}").read_bytes()
            assert make_seeds.metadata_value(loader_seed, KEY) == value
    # scripts/fuzz_smoke.sh gives fuzz_loader -max_len=65536: libFuzzer cuts longer seeds, and a cut
    # default model never reaches the loader's native evaluator.
    for seed in (tmp_path / "loader").iterdir():
        assert seed.stat().st_size <= 65536, seed.name
