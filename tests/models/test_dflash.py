"""DFlash drafter: architecture, cache, checkpoint layout and target binding (CPU, tiny models)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tests.tolerance import Ref, fp64_copy
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3 import modeling_qwen3 as hf_qwen3

from difftree_rt.models.dflash import (
    DFlashCache,
    DFlashConfig,
    DFlashDrafter,
    default_target_layer_ids,
    extract_features,
)

HIDDEN = 64
VOCAB = 97
N_LAYERS = 6


def _qwen3(hidden: int = HIDDEN, vocab: int = VOCAB, layers: int = N_LAYERS) -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=vocab,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    return Qwen3ForCausalLM(config).eval()


def _llama(scaled_rope: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(1)
    rope: dict = {"rope_type": "default", "rope_theta": 500000.0}
    if scaled_rope:
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    config = LlamaConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=5,
        num_attention_heads=6,
        num_key_value_heads=3,
        vocab_size=71,
        max_position_embeddings=512,
        rope_parameters=rope,
    )
    return LlamaForCausalLM(config).eval()


TARGETS = {"qwen3": _qwen3, "llama": _llama, "llama3-rope": lambda: _llama(scaled_rope=True)}


def _drafter(target: torch.nn.Module, num_layers: int = 2, block_size: int = 8) -> DFlashDrafter:
    return DFlashDrafter.for_target(
        target,
        num_layers=num_layers,
        block_size=block_size,
        generator=torch.Generator().manual_seed(123),
    ).eval()


def _features(drafter: DFlashDrafter, t: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, t, drafter.config.feature_size, generator=g)


def _block(drafter: DFlashDrafter, bonus: int, size: int | None = None) -> torch.Tensor:
    return drafter.make_block(torch.tensor([bonus]), size)


def _fresh_draft(
    drafter: DFlashDrafter, block: torch.Tensor, feats: torch.Tensor, span: int | None = None
) -> torch.Tensor:
    """Draft ``block`` [B, S] over a new cache holding exactly ``feats`` [B, T, F]."""
    cache = drafter.new_cache(batch_size=block.shape[0])
    drafter.append_context(cache, feats)
    return drafter.draft(block, cache, span)


def _dense_logits(
    drafter: DFlashDrafter, block: torch.Tensor, feats: torch.Tensor, start: int
) -> Ref:
    """Full recompute from all features at once; context row t at position t; in the
    drafter's dtype and in fp64 (the FA-style tolerance, tests/tolerance.py)."""
    positions = torch.arange(start, start + block.shape[1])[None].expand(block.shape[0], -1)
    fp64 = fp64_copy(drafter)
    with torch.no_grad():
        low = drafter.compute_logits(drafter(block, feats, positions)[:, 1:])
        exact = fp64.compute_logits(fp64(block, feats.double(), positions)[:, 1:])
    return Ref(low, exact)


# ---------------------------------------------------------------------------------------------
# Layer ids, features
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "k", "ids"),
    [
        (36, 5, [1, 9, 17, 25, 33]),  # Qwen3-4B/8B published drafters
        (64, 5, [1, 16, 31, 46, 61]),
        (52, 5, [1, 13, 25, 37, 49]),
        (28, 5, [1, 7, 13, 19, 25]),
        (36, 1, [18]),
        (7, 1, [3]),
        (7, 3, [1, 2, 4]),  # 1 + 1.5 = 2.5 rounds half to even, like the reference
        (6, 2, [1, 3]),
    ],
)
def test_default_target_layer_ids(n: int, k: int, ids: list[int]) -> None:
    assert default_target_layer_ids(n, k) == ids


def test_extract_features_offset_and_order() -> None:
    hs = tuple(torch.full((1, 3, 2), float(i)) for i in range(5))  # embeddings + 4 layers
    out = extract_features(hs, [2, 0])
    assert out.shape == (1, 3, 4)
    assert out[0, 0].tolist() == [3.0, 3.0, 1.0, 1.0]  # layer j -> hidden_states[j + 1]
    with pytest.raises(ValueError, match="out of range"):
        extract_features(hs, [4])


def test_drafter_extract_features_from_hf_output() -> None:
    target = _qwen3()
    drafter = _drafter(target)
    ids = torch.randint(0, VOCAB, (1, 7))
    with torch.no_grad():
        out = target(ids, output_hidden_states=True)
    feats = drafter.extract_features(out)
    expected = torch.cat([out.hidden_states[j + 1] for j in drafter.target_layer_ids], -1)
    assert torch.equal(feats, expected)
    assert feats.shape == (1, 7, drafter.config.feature_size)


# ---------------------------------------------------------------------------------------------
# for_target / bind
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_for_target_fits_and_drafts(arch: str) -> None:
    target = TARGETS[arch]()
    tc = target.config
    drafter = _drafter(target, num_layers=2, block_size=8)
    c = drafter.config
    assert (c.hidden_size, c.vocab_size, c.num_target_layers) == (
        tc.hidden_size,
        tc.vocab_size,
        tc.num_hidden_layers,
    )
    assert c.num_attention_heads == tc.num_attention_heads
    assert c.num_key_value_heads == tc.num_key_value_heads
    assert c.head_dim == getattr(tc, "head_dim", tc.hidden_size // tc.num_attention_heads)
    assert c.rope_parameters["rope_theta"] == tc.rope_parameters["rope_theta"]
    assert c.rope_type == tc.rope_parameters["rope_type"]
    assert c.target_layer_ids == default_target_layer_ids(tc.num_hidden_layers, 2)
    assert c.mask_token_id == tc.vocab_size - 1
    assert drafter.is_bound and drafter.check_target(target) == []
    assert drafter.fc.in_features == 2 * tc.hidden_size

    ids = torch.randint(0, tc.vocab_size, (1, 9))
    with torch.no_grad():
        out = target(ids, output_hidden_states=True)
    cache = drafter.new_cache()
    drafter.append_context(cache, drafter.extract_features(out))
    logits = drafter.draft(_block(drafter, 3), cache)
    assert logits.shape == (1, 7, tc.vocab_size)
    assert torch.isfinite(logits).all()
    assert cache.lengths.tolist() == [9]


def test_for_target_one_layer_default() -> None:
    drafter = DFlashDrafter.for_target(_qwen3(), num_layers=1)
    assert drafter.config.target_layer_ids == [N_LAYERS // 2]
    assert drafter.block_size == 16


def _bind_error(drafter: DFlashDrafter, target: torch.nn.Module) -> str:
    with pytest.raises(ValueError) as info:
        drafter.bind(target)
    return str(info.value)


def test_bind_hidden_size_mismatch() -> None:
    drafter = _drafter(_qwen3())
    msg = _bind_error(drafter, _qwen3(hidden=32))
    assert "hidden_size: expected 32 (target), got 64 (drafter)" in msg
    assert "vocab_size" not in msg


def test_bind_vocab_mismatch() -> None:
    drafter = _drafter(_qwen3(vocab=200))
    drafter.config.mask_token_id = 5  # keep the mask id valid for the smaller vocabulary
    msg = _bind_error(drafter, _qwen3())
    assert f"vocab_size: expected {VOCAB} (target), got 200 (drafter)" in msg
    assert "hidden_size" not in msg and "mask_token_id" not in msg


def test_bind_layer_ids_out_of_range() -> None:
    drafter = _drafter(_qwen3())
    drafter.config.target_layer_ids = [1, N_LAYERS]  # same count, last one past the end
    msg = _bind_error(drafter, _qwen3())
    assert "target_layer_ids" in msg and f"[0, {N_LAYERS})" in msg and "[6]" in msg


def test_bind_num_target_layers_mismatch() -> None:
    drafter = _drafter(_qwen3(layers=12))  # ids [1, 8]: 8 is past a 6-layer target
    msg = _bind_error(drafter, _qwen3())
    assert "num_target_layers: expected 6 (target), got 12 (drafter)" in msg
    assert "target_layer_ids" in msg


def test_bind_mask_id_out_of_range() -> None:
    drafter = _drafter(_qwen3())
    drafter.config.mask_token_id = VOCAB + 3
    msg = _bind_error(drafter, _qwen3())
    assert "mask_token_id" in msg and str(VOCAB + 3) in msg


def test_bind_reports_all_mismatches_at_once() -> None:
    drafter = _drafter(_qwen3(hidden=32, vocab=300, layers=12))
    drafter.config.mask_token_id = 250
    msg = _bind_error(drafter, _qwen3())
    for field in ("hidden_size", "vocab_size", "num_target_layers", "target_layer_ids"):
        assert field in msg
    assert "mask_token_id" in msg
    assert msg.count("\n  - ") == 5  # one line per field


def test_unbound_drafter_refuses_to_draft() -> None:
    drafter = _drafter(_qwen3())
    cache = drafter.new_cache()
    drafter.append_context(cache, _features(drafter, 3))
    drafter.unbind()
    with pytest.raises(RuntimeError, match="bind"):
        drafter.draft(_block(drafter, 1), cache)


# ---------------------------------------------------------------------------------------------
# Checkpoint layout
# ---------------------------------------------------------------------------------------------
def _published_names(num_layers: int) -> set[str]:
    names = {"fc.weight", "hidden_norm.weight", "norm.weight"}
    for i in range(num_layers):
        p = f"layers.{i}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        names |= {p + f"self_attn.{n}_proj.weight" for n in "qkvo"}
        names |= {p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"}
        names |= {p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")}
    return names


def test_save_writes_published_layout(tmp_path: Path) -> None:
    drafter = _drafter(_qwen3(), num_layers=2)
    drafter.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("fc.weight").shape == (HIDDEN, 2 * HIDDEN)
    assert keys == _published_names(2)  # no embed_tokens / lm_head / rotary buffers
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["DFlashDraftModel"]
    assert cfg["model_type"] == "qwen3"
    assert cfg["block_size"] == 8
    assert cfg["num_target_layers"] == N_LAYERS
    assert cfg["dflash_config"] == {"mask_token_id": VOCAB - 1, "target_layer_ids": [1, 3]}
    assert cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == HIDDEN
    assert cfg["rope_theta"] == 10000.0 and cfg["dtype"] == "float32"


def test_save_load_roundtrip_exact(tmp_path: Path) -> None:
    target = _qwen3()
    drafter = _drafter(target)
    drafter.save_pretrained(tmp_path)
    loaded = DFlashDrafter.from_pretrained(tmp_path).bind(target).eval()
    assert loaded.config == drafter.config
    feats = _features(drafter, 11)
    a = _fresh_draft(drafter, _block(drafter, 4), feats)
    b = _fresh_draft(loaded, _block(loaded, 4), feats)
    assert torch.equal(a, b)
    sa, sb = drafter.state_dict(), loaded.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_dtype_and_device(tmp_path: Path) -> None:
    target = _qwen3()
    drafter = _drafter(target)
    drafter.to(torch.bfloat16).save_pretrained(tmp_path)
    kept = DFlashDrafter.from_pretrained(tmp_path)
    assert kept.dtype == torch.bfloat16
    cast = DFlashDrafter.from_pretrained(tmp_path, torch_dtype=torch.float32, device="cpu")
    assert cast.dtype == torch.float32 and cast.device.type == "cpu"
    # RoPE frequencies stay fp32 whatever the parameter dtype.
    assert kept.rotary_emb.inv_freq.dtype == torch.float32


def _write_published_checkpoint(
    path: Path, *, nested: bool = False, prefix: str = "", hf5_rope: bool = False
) -> dict:
    """A drafter directory shaped like z-lab/Qwen3-*-DFlash-b16 (scaled down)."""
    config: dict = {
        "architectures": ["DFlashDraftModel"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "auto_map": {"AutoModel": "dflash.DFlashDraftModel"},
        "block_size": 16,
        "bos_token_id": 1,
        "dflash_config": {"mask_token_id": 90, "target_layer_ids": [1, 2]},
        "dtype": "bfloat16",
        "eos_token_id": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": 96,
        "layer_types": ["full_attention", "full_attention"],
        "max_position_embeddings": 512,
        "max_window_layers": 2,
        "model_type": "qwen3",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "num_target_layers": N_LAYERS,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "transformers_version": "4.57.3",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }
    if nested:  # later exports keep these inside dflash_config
        config["dflash_config"]["block_size"] = config.pop("block_size")
        config["dflash_config"]["num_target_layers"] = config.pop("num_target_layers")
    if hf5_rope:
        del config["rope_theta"], config["rope_scaling"]
        config["rope_parameters"] = {"rope_theta": 1000000.0, "rope_type": "default"}
    g = torch.Generator().manual_seed(7)
    shapes = {"fc.weight": (HIDDEN, 2 * HIDDEN), "hidden_norm.weight": (HIDDEN,)}
    shapes["norm.weight"] = (HIDDEN,)
    for i in range(2):
        p = f"layers.{i}."
        shapes |= {p + "input_layernorm.weight": (HIDDEN,)}
        shapes |= {p + "post_attention_layernorm.weight": (HIDDEN,)}
        shapes |= {
            p + "self_attn.q_proj.weight": (64, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, 64),
        }
        shapes |= {
            p + "self_attn.k_proj.weight": (32, HIDDEN),
            p + "self_attn.v_proj.weight": (32, HIDDEN),
        }
        shapes |= {p + "self_attn.q_norm.weight": (16,), p + "self_attn.k_norm.weight": (16,)}
        shapes |= {p + "mlp.gate_proj.weight": (96, HIDDEN), p + "mlp.up_proj.weight": (96, HIDDEN)}
        shapes |= {p + "mlp.down_proj.weight": (HIDDEN, 96)}
    tensors = {
        prefix + k: (torch.randn(s, generator=g) * 0.05).to(torch.bfloat16)
        for k, s in shapes.items()
    }
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return tensors


@pytest.mark.parametrize(
    "variant",
    [{}, {"nested": True}, {"prefix": "model."}, {"hf5_rope": True}],
    ids=["top-level", "nested-dflash-config", "model-prefix", "rope-parameters"],
)
def test_load_published_style_checkpoint(tmp_path: Path, variant: dict) -> None:
    tensors = _write_published_checkpoint(tmp_path, **variant)
    drafter = DFlashDrafter.from_pretrained(tmp_path)
    c = drafter.config
    assert c.target_layer_ids == [1, 2] and c.mask_token_id == 90
    assert c.block_size == 16 and c.num_target_layers == N_LAYERS
    assert c.rope_theta == 1e6 and c.rope_type == "default"
    assert drafter.dtype == torch.bfloat16
    state = drafter.state_dict()
    for name, value in tensors.items():
        assert torch.equal(state[name.removeprefix("model.")], value)
    drafter.bind(_qwen3())  # fits the 6-layer, 64-wide, 97-token target
    # Unknown fields survive a save.
    drafter.save_pretrained(tmp_path / "resaved")
    again = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert again["bos_token_id"] == 1 and again["eos_token_id"] == 2


def test_load_rejects_wrong_checkpoint(tmp_path: Path) -> None:
    tensors = _write_published_checkpoint(tmp_path)
    del tensors["layers.1.mlp.up_proj.weight"]
    tensors["layers.0.attention_conv.base_kernel"] = torch.zeros(2, 2, HIDDEN)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as info:
        DFlashDrafter.from_pretrained(tmp_path)
    assert "missing layers.1.mlp.up_proj.weight" in str(info.value)
    assert "unexpected layers.0.attention_conv.base_kernel" in str(info.value)


def test_config_rejects_unsupported_variants() -> None:
    base = DFlashDrafter.for_target(_qwen3()).config.to_dict()
    dflash2 = json.loads(json.dumps(base))
    dflash2["dflash_config"]["conv_kernel_size"] = 2
    with pytest.raises(ValueError, match="conv_kernel_size"):
        DFlashConfig.from_dict(dflash2)
    # Windowed / causal drafters load (tests/models/test_dflash_variants.py); other layer
    # kinds do not.
    linear = dict(base, layer_types=["linear_attention"])
    with pytest.raises(ValueError, match="'linear_attention'"):
        DFlashConfig.from_dict(linear)
    no_mask = json.loads(json.dumps(base))
    del no_mask["dflash_config"]["mask_token_id"]
    with pytest.raises(ValueError, match="mask_token_id"):
        DFlashConfig.from_dict(no_mask)


# ---------------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------------
def _oracle_hidden(
    drafter: DFlashDrafter, block: torch.Tensor, feats: torch.Tensor, start: int
) -> torch.Tensor:
    """The §1 architecture written with transformers' own Qwen3 pieces and eager attention."""
    c = drafter.config
    hf_cfg = Qwen3Config(
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters),
    )

    def norm(weight: torch.Tensor, size: int) -> hf_qwen3.Qwen3RMSNorm:
        n = hf_qwen3.Qwen3RMSNorm(size, eps=c.rms_norm_eps)
        n.weight.data.copy_(weight)
        return n

    rotary = hf_qwen3.Qwen3RotaryEmbedding(hf_cfg)
    t, s = feats.shape[1], block.shape[1]
    x_dummy = torch.zeros(1, dtype=drafter.dtype)
    cos, sin = rotary(x_dummy, torch.arange(t + s)[None] + torch.tensor([0] * t + [start - t] * s))
    ctx = norm(drafter.hidden_norm.weight, c.hidden_size)(feats @ drafter.fc.weight.T)
    h = drafter.embed(block)
    for layer in drafter.layers:
        a = layer.self_attn
        x = norm(layer.input_layernorm.weight, c.hidden_size)(h)
        q = (x @ a.q_proj.weight.T).view(1, s, -1, c.head_dim)
        q = norm(a.q_norm.weight, c.head_dim)(q).transpose(1, 2)
        kv_in = torch.cat([ctx, x], dim=1)
        k = (kv_in @ a.k_proj.weight.T).view(1, t + s, -1, c.head_dim)
        k = norm(a.k_norm.weight, c.head_dim)(k).transpose(1, 2)
        v = (kv_in @ a.v_proj.weight.T).view(1, t + s, -1, c.head_dim).transpose(1, 2)
        cq, sq = cos[:, None, t:], sin[:, None, t:]
        q = q * cq + hf_qwen3.rotate_half(q) * sq
        k = k * cos[:, None] + hf_qwen3.rotate_half(k) * sin[:, None]
        rep = c.num_attention_heads // c.num_key_value_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        w = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(c.head_dim), dim=-1)  # no mask
        o = (w @ v).transpose(1, 2).reshape(1, s, -1) @ a.o_proj.weight.T
        h = h + o
        mlp = hf_qwen3.Qwen3MLP(
            Qwen3Config(hidden_size=c.hidden_size, intermediate_size=c.intermediate_size)
        )
        mlp.load_state_dict(layer.mlp.state_dict())
        h = h + mlp(norm(layer.post_attention_layernorm.weight, c.hidden_size)(h))
    return norm(drafter.norm.weight, c.hidden_size)(h)


@pytest.mark.parametrize("arch", ["qwen3", "llama3-rope"])
def test_matches_oracle_built_from_transformers(arch: str) -> None:
    target = TARGETS[arch]()
    drafter = _drafter(target, num_layers=2)
    feats = _features(drafter, 10)
    block = _block(drafter, 7)
    start = 10
    fp64 = fp64_copy(drafter)
    with torch.no_grad():
        low = _oracle_hidden(drafter, block, feats, start)[:, 1:]
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            exact = _oracle_hidden(fp64, block, feats.double(), start)[:, 1:]
        finally:
            torch.set_default_dtype(default)
        # The cached path against the oracle's hidden states through the same LM head.
        want = Ref(drafter.compute_logits(low), fp64.compute_logits(exact))
    want.check(_fresh_draft(drafter, block, feats))
    want.check(_fresh_draft(drafter, block, feats, span=start + block.shape[1]))


def test_block_attention_is_non_causal() -> None:
    drafter = _drafter(_qwen3())
    feats = _features(drafter, 6)
    block = _block(drafter, 3)
    changed = block.clone()
    changed[0, 5] = 11  # a later slot
    a = _fresh_draft(drafter, block, feats)
    b = _fresh_draft(drafter, changed, feats)
    # Row 0 of the output is slot 1 (depth 1), earlier than slot 5: it must see the change.
    assert not torch.allclose(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, 3], b[:, 3])


def test_context_rows_ignore_block_rows_and_mlps() -> None:
    drafter = _drafter(_qwen3(), num_layers=3)
    feats = _features(drafter, 9)
    cache_a, cache_b = drafter.new_cache(), drafter.new_cache()
    drafter.append_context(cache_a, feats)
    drafter.draft(_block(drafter, 3), cache_a)
    changed = _block(drafter, 50)
    changed[0, 2:] = 7
    drafter.append_context(cache_b, feats)
    drafter.draft(changed, cache_b)
    with torch.no_grad():
        ctx = drafter.fuse(feats)
        cos, sin = drafter.rotary_emb(torch.arange(9)[None], drafter.dtype)
        fp64 = fp64_copy(drafter)
        ctx64 = fp64.fuse(feats.double())
        cos64, sin64 = fp64.rotary_emb(torch.arange(9)[None], torch.float64)
        for i, layer in enumerate(drafter.layers):
            assert torch.equal(cache_a.keys[i][:, :, :9], cache_b.keys[i][:, :, :9])
            assert torch.equal(cache_a.values[i][:, :, :9], cache_b.values[i][:, :, :9])
            # Every layer's context K/V come straight from the fused features: no MLP, no
            # residual stream from the previous layer.
            k, v = layer.self_attn.key_value(ctx, cos, sin)
            k64, v64 = fp64.layers[i].self_attn.key_value(ctx64, cos64, sin64)
            Ref(k, k64).check(cache_a.keys[i][:, :, :9])
            Ref(v, v64).check(cache_a.values[i][:, :, :9])
    assert cache_a.lengths.tolist() == [9]  # block rows are not kept


def test_context_rows_are_position_tagged() -> None:
    # Context rows are position-tagged: permuting them changes the draft.
    drafter = _drafter(_qwen3())
    feats = _features(drafter, 5)
    a = _fresh_draft(drafter, _block(drafter, 2), feats)
    b = _fresh_draft(drafter, _block(drafter, 2), feats.flip(1))
    assert not torch.allclose(a, b)


# ---------------------------------------------------------------------------------------------
# Cache and positions
# ---------------------------------------------------------------------------------------------
def test_incremental_cache_matches_full_recompute() -> None:
    target = _qwen3()
    drafter = _drafter(target, num_layers=2, block_size=8)
    total = _features(drafter, 40, seed=3)
    s_len = drafter.block_size
    cache = drafter.new_cache(capacity=29 + s_len)  # exactly the last round's context + block
    seen = 0
    for n_new, bonus in [(13, 5), (1, 9), (4, 2), (8, 60), (3, 1)]:
        drafter.append_context(cache, total[:, seen : seen + n_new])
        seen += n_new
        block = _block(drafter, bonus)
        expected = _dense_logits(drafter, block, total[:, :seen], start=seen)
        expected.check(drafter.draft(block, cache, span=seen + s_len))  # the exact span
        expected.check(drafter.draft(block, cache))  # the whole capacity
        assert cache.lengths.tolist() == [seen] and cache.length_floor == seen
    # The capacity is fixed: appending past it is an error, not a silent out-of-bounds write.
    with pytest.raises(ValueError, match="capacity"):
        drafter.append_context(cache, total[:, seen : seen + s_len + 1])
    assert cache.capacity == seen + s_len and cache.lengths.tolist() == [seen]


def test_crop_rolls_back_context() -> None:
    drafter = _drafter(_qwen3())
    feats = _features(drafter, 12)
    cache = drafter.new_cache()
    drafter.append_context(cache, feats[:, :9])
    drafter.append_context(cache, _features(drafter, 5, seed=9))  # rows to be rolled back
    cache.crop(9)
    assert cache.lengths.tolist() == [9]
    drafter.append_context(cache, feats[:, 9:])
    got = drafter.draft(_block(drafter, 4), cache)
    expected = _dense_logits(drafter, _block(drafter, 4), feats, start=12)
    expected.check(got)


def test_short_block_and_empty_new_features() -> None:
    drafter = _drafter(_qwen3(), block_size=8)
    feats = _features(drafter, 6)
    cache = drafter.new_cache()
    drafter.append_context(cache, feats)
    short = _block(drafter, 4, size=3)
    drafter.append_context(cache, feats[:, :0])  # nothing new committed
    got = drafter.draft(short, cache)
    assert got.shape == (1, 2, VOCAB)
    _dense_logits(drafter, short, feats, start=6).check(got)


def test_block_positions_follow_the_cache_length() -> None:
    drafter = _drafter(_qwen3())
    feats = _features(drafter, 13)
    block = _block(drafter, 4)
    got = _fresh_draft(drafter, block, feats[:, :10])
    expected = _dense_logits(drafter, block, feats[:, :10], start=10)
    expected.check(got)
    # RoPE sees the positions: the same rows with the block at 13 draft differently.
    shifted = _dense_logits(drafter, block, feats[:, :10], start=13)
    assert not torch.allclose(got, shifted.low)
    # Padding rows (written, not counted) move neither the block nor the context.
    cache = drafter.new_cache()
    drafter.append_context(cache, feats, num_new=torch.tensor([10]))
    assert cache.lengths.tolist() == [10]
    expected.check(drafter.draft(block, cache))


def test_rope_is_relative() -> None:
    # Moving every row (context and block) by the same offset leaves the output unchanged.
    drafter = _drafter(_qwen3())
    feats = _features(drafter, 7)
    block = _block(drafter, 4)
    with torch.no_grad():
        base = drafter(block, feats, torch.arange(7, 15)[None])
        exact = fp64_copy(drafter)(block, feats.double(), torch.arange(7, 15)[None])
        moved = drafter(
            block,
            feats,
            torch.arange(107, 115)[None],
            context_positions=torch.arange(100, 107)[None],
        )
    Ref(base, exact).check(moved)


def test_batch_matches_single_requests() -> None:
    drafter = _drafter(_qwen3())
    feats = _features(drafter, 9, batch=2, seed=5)
    bonus = torch.tensor([3, 40])
    got = _fresh_draft(drafter, drafter.make_block(bonus), feats)
    fp64 = fp64_copy(drafter)
    for b in range(2):
        block = drafter.make_block(bonus[b : b + 1])
        single = _fresh_draft(drafter, block, feats[b : b + 1])
        exact = _fresh_draft(fp64, block, feats[b : b + 1].double())
        Ref(single, exact).check(got[b : b + 1])


def test_ragged_batch_matches_single_requests() -> None:
    drafter = _drafter(_qwen3())
    feats = _features(drafter, 10, batch=2, seed=6)
    lengths = [10, 6]  # request 1's last 4 rows are padding
    cache = drafter.new_cache(batch_size=2)
    drafter.append_context(cache, feats, num_new=torch.tensor(lengths))
    assert cache.lengths.tolist() == lengths
    assert cache.length_floor == 0  # the host never learns a counted append's lengths
    more = _features(drafter, 3, batch=2, seed=8)
    bonus = torch.tensor([3, 40])
    drafter.append_context(cache, more, num_new=torch.tensor([3, 2]))
    assert cache.lengths.tolist() == [13, 8]  # padding not counted
    s_len = drafter.block_size
    got = drafter.draft(drafter.make_block(bonus), cache, span=13 + s_len)  # the exact span
    torch.testing.assert_close(drafter.draft(drafter.make_block(bonus), cache), got)
    ctxs = []
    for b, (n, m) in enumerate([(10, 3), (6, 2)]):
        ctxs.append(torch.cat([feats[b : b + 1, :n], more[b : b + 1, :m]], dim=1))
        expected = _dense_logits(drafter, drafter.make_block(bonus[b : b + 1]), ctxs[b], n + m)
        expected.check(got[b : b + 1])
    cache.crop(torch.tensor([12, 8]))
    assert cache.lengths.tolist() == [12, 8]
    cache.crop(8)
    assert cache.lengths.tolist() == [8, 8]
    got = drafter.draft(drafter.make_block(bonus), cache, span=8 + s_len)
    for b in range(2):
        block = drafter.make_block(bonus[b : b + 1])
        _dense_logits(drafter, block, ctxs[b][:, :8], 8).check(got[b : b + 1])


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors() -> None:
    drafter = _drafter(_qwen3(), block_size=8)
    feats = _features(drafter, 4)
    block = _block(drafter, 1)
    with pytest.raises(ValueError, match=r"F=128"):
        drafter.append_context(drafter.new_cache(), feats[..., :-1])
    with pytest.raises(ValueError, match="dtype"):
        drafter.append_context(drafter.new_cache(), feats.double())
    with pytest.raises(ValueError, match=r"B=2"):
        drafter.append_context(drafter.new_cache(batch_size=2), feats)
    cache = drafter.new_cache(capacity=16)
    drafter.append_context(cache, feats)
    with pytest.raises(ValueError, match="block_size=8"):
        drafter.draft(_block(drafter, 1, size=9), cache)
    with pytest.raises(ValueError, match="integer"):
        drafter.draft(block.float(), cache)
    with pytest.raises(ValueError, match="cache batch"):
        drafter.draft(block, drafter.new_cache(batch_size=2))
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        drafter.draft(block[0], cache)
    with pytest.raises(ValueError, match="capacity=16"):
        drafter.draft(block, cache, span=17)
    with pytest.raises(ValueError, match="block rows"):  # 4 context rows + 8 block rows > 11
        drafter.draft(block, cache, span=11)
    with pytest.raises(ValueError, match="capacity"):
        drafter.append_context(cache, _features(drafter, 13))


def test_cache_object_api() -> None:
    cache = DFlashCache(2, 1, 2, 4, capacity=3, dtype=torch.float32)
    assert cache.capacity == 3 and cache.batch_size == 1 and cache.length_floor == 0
    cache.lengths.fill_(2)
    cache.length_floor = 2
    cache.crop(1)
    assert cache.lengths.tolist() == [1] and cache.length_floor == 1
    cache.reset()
    assert cache.lengths.tolist() == [0] and cache.length_floor == 0
    assert cache.capacity == 3  # fixed
    with pytest.raises(ValueError):
        cache.crop(-1)


def test_bf16_target_gives_bf16_drafter() -> None:
    target = _qwen3().to(torch.bfloat16)
    drafter = _drafter(target)
    assert drafter.dtype == torch.bfloat16
    assert drafter.rotary_emb.inv_freq.dtype == torch.float32
    ids = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        out = target(ids, output_hidden_states=True)
    logits = _fresh_draft(drafter, _block(drafter, 2), drafter.extract_features(out))
    assert logits.dtype == torch.bfloat16 and logits.shape == (1, 7, VOCAB)
    with pytest.raises(ValueError, match="output_hidden_states"):
        drafter.extract_features(target(ids))
