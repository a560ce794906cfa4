"""Bad drafter checkpoints: every config field checked for type and range with its name and
the config path in the message; shard paths confined to the checkpoint directory; the layer
count and shapes checked against the weights present before any module is built."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from difftree_rt.models.dflash import DFlashConfig, DFlashDrafter

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


def _config() -> DFlashConfig:
    return DFlashConfig(
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        vocab_size=32,
        target_layer_ids=[0, 2],
        mask_token_id=31,
        block_size=4,
        num_target_layers=4,
    )


def _checkpoint(path: Path) -> dict[str, Any]:
    """A tiny valid drafter directory at ``path``; returns its config.json as a dict."""
    torch.manual_seed(0)
    drafter = DFlashDrafter(_config())
    drafter.reset_parameters()
    drafter.save_pretrained(path)
    return json.loads((path / "config.json").read_text())


def _write_config(path: Path, raw: Any) -> None:
    (path / "config.json").write_text(json.dumps(raw))


def _load_error(path: Path, exc: type = ValueError) -> str:
    with pytest.raises(exc) as info:
        DFlashDrafter.from_pretrained(path)
    return str(info.value)


def test_tiny_checkpoint_loads(tmp_path: Path) -> None:
    _checkpoint(tmp_path)
    assert DFlashDrafter.from_pretrained(tmp_path).config == _config()


# ---- config fields ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("hidden_size", "abc"),
        ("hidden_size", 256.9),
        ("hidden_size", 16.0),
        ("hidden_size", True),
        ("hidden_size", 0),
        ("hidden_size", [16]),
        ("intermediate_size", -24),
        ("intermediate_size", "24"),
        ("num_hidden_layers", "2"),
        ("num_hidden_layers", 0),
        ("num_attention_heads", 2.5),
        ("num_key_value_heads", "1"),
        ("head_dim", 7.5),
        ("vocab_size", "32"),
        ("block_size", 1),
        ("block_size", "4"),
        ("num_target_layers", "4"),
        ("num_target_layers", 0),
        ("target_layer_ids", 3),
        ("target_layer_ids", "0,2"),
        ("target_layer_ids", [0, "2"]),
        ("target_layer_ids", [0, 2.5]),
        ("target_layer_ids", [0, -1]),
        ("target_layer_ids", []),
        ("mask_token_id", "31"),
        ("mask_token_id", 32),
        ("mask_token_id", -1),
        ("rms_norm_eps", "1e-6"),
        ("rms_norm_eps", 0.0),
        ("rms_norm_eps", float("inf")),
        ("hidden_act", 5),
        ("hidden_act", "relu"),
        ("attention_bias", "false"),
        ("max_position_embeddings", "big"),
        ("max_position_embeddings", 0),
        ("initializer_range", "x"),
        ("rope_theta", "1e4"),
        ("rope_theta", -1.0),
        ("rope_parameters", [1, 2]),
        ("rope_scaling", "linear"),
        ("input_embedding_scale", "2"),
        ("output_multiplier", float("nan")),
        ("final_logit_softcapping", "30"),
        ("final_logit_softcapping", 0.0),
        ("partial_rotary_factor", "half"),
        ("layer_types", "full_attention"),
        ("dflash_config", 3),
    ],
)
def test_bad_field_names_field_and_path(tmp_path: Path, field: str, value: Any) -> None:
    raw = _checkpoint(tmp_path)
    in_dflash = field in ("target_layer_ids", "mask_token_id")
    if field == "rope_theta":  # the written config has both spellings; keep one
        raw.pop("rope_parameters")
        raw["rope_scaling"] = None
    if field == "rope_parameters":
        raw.pop("rope_theta")
    (raw["dflash_config"] if in_dflash else raw)[field] = value
    _write_config(tmp_path, raw)
    message = _load_error(tmp_path)
    assert field in message
    assert os.fspath(tmp_path / "config.json") in message


def test_field_from_dflash_config_is_named(tmp_path: Path) -> None:
    raw = _checkpoint(tmp_path)
    raw["dflash_config"]["block_size"] = "16"
    _write_config(tmp_path, raw)
    assert "dflash_config.block_size" in _load_error(tmp_path)


def test_direct_construction_checks_types() -> None:
    kwargs = _config().__dict__ | {"hidden_size": 16.5}
    with pytest.raises(ValueError, match="hidden_size"):
        DFlashConfig(**kwargs)
    kwargs = _config().__dict__ | {"target_layer_ids": 3}
    with pytest.raises(ValueError, match="target_layer_ids"):
        DFlashConfig(**kwargs)


def test_invalid_json_names_the_path(tmp_path: Path) -> None:
    _checkpoint(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 16,')
    message = _load_error(tmp_path)
    assert "not valid JSON" in message and os.fspath(tmp_path / "config.json") in message


def test_config_json_must_be_an_object(tmp_path: Path) -> None:
    _checkpoint(tmp_path)
    _write_config(tmp_path, [1, 2])
    message = _load_error(tmp_path)
    assert "JSON object" in message and os.fspath(tmp_path / "config.json") in message


def test_missing_config(tmp_path: Path) -> None:
    _checkpoint(tmp_path)
    (tmp_path / "config.json").unlink()
    message = _load_error(tmp_path, FileNotFoundError)
    assert os.fspath(tmp_path / "config.json") in message


# ---- the weights present bound the config ----------------------------------------------------
def test_huge_layer_count_is_rejected_before_building(tmp_path: Path) -> None:
    raw = _checkpoint(tmp_path)
    raw["num_hidden_layers"] = 1_000_000
    _write_config(tmp_path, raw)
    start = time.perf_counter()
    message = _load_error(tmp_path)
    assert time.perf_counter() - start < 0.5
    assert "num_hidden_layers" in message and "1000000" in message and "2" in message
    assert os.fspath(tmp_path) in message


def test_huge_layer_count_without_layer_ids(tmp_path: Path) -> None:
    raw = _checkpoint(tmp_path)
    raw["num_hidden_layers"] = 1_000_000
    del raw["dflash_config"]["target_layer_ids"]
    _write_config(tmp_path, raw)
    start = time.perf_counter()
    assert "num_hidden_layers" in _load_error(tmp_path)
    assert time.perf_counter() - start < 0.5


def test_huge_width_is_rejected_before_building(tmp_path: Path) -> None:
    raw = _checkpoint(tmp_path)
    raw["intermediate_size"] = 10**9
    _write_config(tmp_path, raw)
    start = time.perf_counter()
    message = _load_error(tmp_path)
    assert time.perf_counter() - start < 0.5
    assert "mlp.up_proj.weight" in message and os.fspath(tmp_path) in message


def test_fewer_layers_than_weights(tmp_path: Path) -> None:
    raw = _checkpoint(tmp_path)
    raw["num_hidden_layers"] = 1
    _write_config(tmp_path, raw)
    message = _load_error(tmp_path)
    assert "num_hidden_layers" in message and "2" in message


# ---- shard paths ------------------------------------------------------------------------------
def _sharded(path: Path) -> dict[str, str]:
    """Split the tiny checkpoint at ``path`` into two shards + an index; returns the map."""
    from safetensors.torch import load_file

    state = load_file(str(path / WEIGHTS))
    (path / WEIGHTS).unlink()
    names = sorted(state)
    half = len(names) // 2
    weight_map: dict[str, str] = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(path / shard))
        weight_map |= {k: shard for k in part}
    (path / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def _rewrite_index(path: Path, weight_map: dict[str, Any]) -> None:
    (path / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_sharded_checkpoint_loads(tmp_path: Path) -> None:
    _checkpoint(tmp_path)
    ref = DFlashDrafter.from_pretrained(tmp_path).state_dict()
    _sharded(tmp_path)
    got = DFlashDrafter.from_pretrained(tmp_path).state_dict()
    assert list(got) == list(ref) and all(torch.equal(got[k], ref[k]) for k in ref)


def _outside_shard(tmp_path: Path) -> tuple[Path, dict[str, str], str]:
    """A checkpoint in tmp_path/ckpt whose first shard is moved to tmp_path (outside)."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _checkpoint(ckpt)
    weight_map = _sharded(ckpt)
    first = sorted(set(weight_map.values()))[0]
    os.replace(ckpt / first, tmp_path / "outside.safetensors")
    return ckpt, weight_map, first


def test_index_entry_outside_the_directory(tmp_path: Path) -> None:
    ckpt, weight_map, first = _outside_shard(tmp_path)
    _rewrite_index(
        ckpt, {k: "../outside.safetensors" if v == first else v for k, v in weight_map.items()}
    )
    message = _load_error(ckpt)
    assert "../outside.safetensors" in message and "outside" in message
    assert os.fspath(ckpt) in message


def test_index_entry_absolute_path(tmp_path: Path) -> None:
    ckpt, weight_map, first = _outside_shard(tmp_path)
    absolute = os.fspath(tmp_path / "outside.safetensors")
    _rewrite_index(ckpt, {k: absolute if v == first else v for k, v in weight_map.items()})
    assert absolute in _load_error(ckpt)


def test_index_entry_symlink_escaping(tmp_path: Path) -> None:
    ckpt, _, first = _outside_shard(tmp_path)
    os.symlink(tmp_path / "outside.safetensors", ckpt / first)
    assert first in _load_error(ckpt)


def test_single_file_symlink_escaping(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _checkpoint(ckpt)
    os.replace(ckpt / WEIGHTS, tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", ckpt / WEIGHTS)
    assert "outside" in _load_error(ckpt)


def test_symlink_inside_the_directory_loads(tmp_path: Path) -> None:
    _checkpoint(tmp_path)
    (tmp_path / "blobs").mkdir()
    os.replace(tmp_path / WEIGHTS, tmp_path / "blobs" / "abc")
    os.symlink(Path("blobs") / "abc", tmp_path / WEIGHTS)
    assert DFlashDrafter.from_pretrained(tmp_path).config == _config()


def test_hf_cache_snapshot_layout_loads(tmp_path: Path) -> None:
    """The Hugging Face cache links snapshots/<rev>/<file> to ../../blobs/<hash>."""
    repo = tmp_path / "models--org--drafter"
    snap = repo / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    _checkpoint(snap)
    (repo / "blobs").mkdir()
    for name in ("config.json", WEIGHTS):
        os.replace(snap / name, repo / "blobs" / f"hash-{name}")
        os.symlink(Path("..") / ".." / "blobs" / f"hash-{name}", snap / name)
    assert DFlashDrafter.from_pretrained(snap).config == _config()


@pytest.mark.parametrize(
    "index, words",
    [
        ("{broken", ["not valid JSON"]),
        (json.dumps([1]), ["JSON object"]),
        (json.dumps({"metadata": {}}), ["weight_map"]),
        (json.dumps({"weight_map": ["a"]}), ["weight_map"]),
        (json.dumps({"weight_map": {"fc.weight": 5}}), ["weight_map", "fc.weight"]),
        (json.dumps({"weight_map": {"fc.weight": ""}}), ["weight_map", "fc.weight"]),
    ],
)
def test_bad_index(tmp_path: Path, index: str, words: list[str]) -> None:
    _checkpoint(tmp_path)
    _sharded(tmp_path)
    (tmp_path / INDEX).write_text(index)
    message = _load_error(tmp_path)
    assert all(w in message for w in words), message
    assert os.fspath(tmp_path / INDEX) in message


def test_index_names_a_missing_shard(tmp_path: Path) -> None:
    _checkpoint(tmp_path)
    weight_map = _sharded(tmp_path)
    _rewrite_index(tmp_path, dict.fromkeys(weight_map, "missing.safetensors"))
    message = _load_error(tmp_path, FileNotFoundError)
    assert "missing.safetensors" in message
    assert os.fspath(tmp_path / INDEX) in message
