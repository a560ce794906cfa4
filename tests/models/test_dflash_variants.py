"""DFlash drafter variants (issue 16): windowed and causal layers, RoPE variants and the input
embedding scale, against a brute-force drafter written with explicit per-query key lists;
the windowed layers' ring cache against full storage; config round trips and refusals
(CPU, tiny models, fp32 against fp64)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tests.tolerance import Ref, fp64_copy
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3 import modeling_qwen3 as hf_qwen3

from difftree_rt.models.dflash import DFlashConfig, DFlashDrafter

HIDDEN = 32
VOCAB = 61
SLIDE, FULL = "sliding_attention", "full_attention"

ROPES: dict[str, dict[str, Any]] = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "yarn": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 16,
        "beta_fast": 8.0,
        "beta_slow": 1.0,
    },
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
}


def _target(rope: str = "default") -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        rope_parameters=dict(ROPES[rope]),
    )
    return Qwen3ForCausalLM(config).eval()


def _drafter(
    layer_types: list[str],
    window: int | None = None,
    is_causal: bool | None = None,
    *,
    rope: str = "default",
    block_size: int = 4,
    scale: float = 1.0,
    dflash_causal: bool | None = None,
) -> DFlashDrafter:
    drafter = DFlashDrafter.for_target(
        _target(rope),
        num_layers=len(layer_types),
        block_size=block_size,
        layer_types=layer_types,
        sliding_window=window,
        is_causal=is_causal,
        generator=torch.Generator().manual_seed(7),
    ).eval()
    drafter.config.input_embedding_scale = scale
    if dflash_causal is not None:
        drafter.config.dflash_extra["causal"] = dflash_causal
    return drafter


def _features(drafter: DFlashDrafter, t: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, t, drafter.config.feature_size, generator=g)


def _block(drafter: DFlashDrafter, bonus: int | list[int], size: int | None = None) -> torch.Tensor:
    bonus = [bonus] if isinstance(bonus, int) else bonus
    return drafter.make_block(torch.tensor(bonus), size)


# ---------------------------------------------------------------------------------------------
# The brute-force drafter: plain loops, one explicit key list per query row
# ---------------------------------------------------------------------------------------------
def _visible(q: int, k: int, window: int | None, causal: bool) -> bool:
    """Whether a query at position q sees the key at position k (the reference drafter's
    mask, z-lab/dflash dflash/model.py ``_attention_mask``)."""
    if causal and k > q:
        return False
    if window is not None and q - k >= window:
        return False
    if window is not None and not causal and k - q >= window:
        return False
    return True


def _brute_logits(
    drafter: DFlashDrafter, block: torch.Tensor, feats: torch.Tensor, start: int, dtype: Any
) -> torch.Tensor:
    """Logits [1, S - 1, V] of ``block`` [1, S] at positions ``start + j`` over context rows
    ``feats`` [1, T, F] at positions 0..T-1, in ``dtype``: the DFlash layers written out with
    one key list per (layer, query row) from :func:`_visible`, the layer kinds read from the
    raw config fields, RoPE from transformers' own Qwen3RotaryEmbedding."""
    c = drafter.config
    w = {name: p.detach().to(dtype) for name, p in drafter.named_parameters()}
    embed, head = (m.weight.detach().to(dtype) for m in drafter._bound())
    n_heads, n_kv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    t_len, s_len = feats.shape[1], block.shape[1]
    pos = list(range(t_len)) + [start + j for j in range(s_len)]
    rotary = hf_qwen3.Qwen3RotaryEmbedding(
        Qwen3Config(
            hidden_size=c.hidden_size,
            num_attention_heads=n_heads,
            head_dim=d,
            max_position_embeddings=c.max_position_embeddings,
            rope_parameters=dict(c.rope_parameters),
        )
    )
    cos, sin = rotary(torch.zeros(1, dtype=dtype), torch.tensor(pos)[None])
    cos, sin = cos[0], sin[0]  # [T + S, D]

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return w[name] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps))

    def rope(x: torch.Tensor, rows: slice) -> torch.Tensor:  # x [N, heads, D]
        half = d // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos[rows, None] + rotated * sin[rows, None]

    ctx = norm(feats[0].to(dtype) @ w["fc.weight"].T, "hidden_norm.weight")
    h = F.embedding(block[0], embed) * c.input_embedding_scale
    for i in range(c.num_hidden_layers):
        p = f"layers.{i}."
        # The layer kind straight from the fields (not through the config's helpers).
        sliding = c.layer_types[i] == SLIDE
        window = c.sliding_window if sliding else None
        causal = c.is_causal if c.is_causal is not None else c.dflash_extra.get("causal", sliding)
        x = norm(h, p + "input_layernorm.weight")
        q = (x @ w[p + "self_attn.q_proj.weight"].T).view(s_len, n_heads, d)
        q = rope(norm(q, p + "self_attn.q_norm.weight"), slice(t_len, None))
        rows = torch.cat([ctx, x])
        k = (rows @ w[p + "self_attn.k_proj.weight"].T).view(-1, n_kv, d)
        k = rope(norm(k, p + "self_attn.k_norm.weight"), slice(None))
        v = (rows @ w[p + "self_attn.v_proj.weight"].T).view(-1, n_kv, d)
        out = torch.zeros(s_len, n_heads, d, dtype=dtype)
        for j in range(s_len):
            q_pos = pos[t_len + j]
            keys = [r for r in range(t_len + s_len) if _visible(q_pos, pos[r], window, causal)]
            for hd in range(n_heads):
                g = hd // (n_heads // n_kv)
                scores = k[keys, g] @ q[j, hd] / math.sqrt(d)
                out[j, hd] = torch.softmax(scores, dim=0) @ v[keys, g]
        h = h + out.reshape(s_len, -1) @ w[p + "self_attn.o_proj.weight"].T
        y = norm(h, p + "post_attention_layernorm.weight")
        gate = F.silu(y @ w[p + "mlp.gate_proj.weight"].T) * (y @ w[p + "mlp.up_proj.weight"].T)
        h = h + gate @ w[p + "mlp.down_proj.weight"].T
    hidden = norm(h, "norm.weight")[1:]
    return (hidden @ head.T * c.output_multiplier)[None]


def _brute(drafter: DFlashDrafter, block: torch.Tensor, feats: torch.Tensor, start: int) -> Ref:
    low = _brute_logits(drafter, block, feats, start, torch.float32)
    return Ref(low, _brute_logits(drafter, block, feats, start, torch.float64))


def _dense(drafter: DFlashDrafter, block: torch.Tensor, feats: torch.Tensor, start: int) -> Ref:
    """The drafter's own stateless forward over all rows (fp32 and fp64)."""
    positions = torch.arange(start, start + block.shape[1])[None].expand(block.shape[0], -1)
    fp64 = fp64_copy(drafter)
    with torch.no_grad():
        low = drafter.compute_logits(drafter(block, feats, positions)[:, 1:])
        exact = fp64.compute_logits(fp64(block, feats.double(), positions)[:, 1:])
    return Ref(low, exact)


# ---------------------------------------------------------------------------------------------
# Each field against the brute force
# ---------------------------------------------------------------------------------------------
VARIANTS: dict[str, dict[str, Any]] = {
    # A sliding layer is causal unless is_causal says otherwise (the reference's default).
    "sliding-causal-by-default": {"layer_types": [SLIDE, FULL], "window": 5},
    # Non-causal window narrower than the block: block rows are clipped both ways.
    "sliding-non-causal": {"layer_types": [FULL, SLIDE], "window": 3, "is_causal": False},
    "causal-everywhere": {"layer_types": [FULL, FULL], "is_causal": True},
    "dflash-config-causal": {"layer_types": [FULL, SLIDE], "window": 6, "dflash_causal": False},
    # A sliding layer whose window was dropped (use_sliding_window false): causal, unwindowed.
    "sliding-without-window": {"layer_types": [SLIDE, FULL], "window": None},
    "yarn": {"layer_types": [SLIDE, FULL], "window": 4, "rope": "yarn"},
    "linear-rope": {"layer_types": [FULL, SLIDE], "window": 4, "rope": "linear"},
    "llama3-rope": {"layer_types": [FULL, FULL], "rope": "llama3"},
    "input-embedding-scale": {"layer_types": [SLIDE, SLIDE], "window": 7, "scale": 2.5},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_field_matches_brute_force(name: str) -> None:
    drafter = _drafter(**VARIANTS[name])
    feats = _features(drafter, 13)  # longer than every window
    block = _block(drafter, 9)
    want = _brute(drafter, block, feats, start=13)
    _dense(drafter, block, feats, 13).check(want.low, what="dense forward")
    for ring in (True, False):
        cache = drafter.new_cache(capacity=13 + 4 + 30, ring=ring)
        drafter.append_context(cache, feats)
        want.check(drafter.draft(block, cache, span=17), what=f"{name} ring={ring}")
        want.check(drafter.draft(block, cache), what=f"{name} ring={ring}, whole capacity")


def test_window_and_causality_change_the_draft() -> None:
    # The brute force above would not notice a rule that both sides drop: the rules matter.
    feats = _features(_drafter([FULL, FULL]), 13)
    block = _block(_drafter([FULL, FULL]), 9)
    plain = _brute_logits(_drafter([FULL, FULL]), block, feats, 13, torch.float64)
    for kind in ({"window": 5, "is_causal": False}, {"window": None, "is_causal": True}):
        other = _brute_logits(_drafter([SLIDE, FULL], **kind), block, feats, 13, torch.float64)
        assert (plain - other).abs().max() > 1e-3


def test_rope_tables_match_transformers() -> None:
    for rope in ("yarn", "linear", "llama3"):
        drafter = _drafter([FULL], rope=rope)
        hf = hf_qwen3.Qwen3RotaryEmbedding(_target(rope).config)
        positions = torch.arange(0, 60, 7)[None]
        cos, sin = drafter.rotary_emb(positions, torch.float32)
        want_cos, want_sin = hf(torch.zeros(1), positions)
        torch.testing.assert_close(cos, want_cos)
        torch.testing.assert_close(sin, want_sin)
        assert drafter.config.rope_type == rope


# ---------------------------------------------------------------------------------------------
# The ring against full storage
# ---------------------------------------------------------------------------------------------
def test_ring_holds_only_the_window() -> None:
    drafter = _drafter([SLIDE, FULL, SLIDE], window=6, block_size=4)
    cache = drafter.new_cache(capacity=200)
    ring = 6 + 2 * 4
    assert cache.rings == [ring, None, ring]
    assert cache.layer_rows == [ring + 1, 200, ring + 1] == drafter.cache_rows(200)
    assert [k.shape[2] for k in cache.keys] == cache.layer_rows
    full = drafter.new_cache(capacity=200, ring=False)
    assert full.layer_rows == [200, 200, 200] and cache.nbytes < full.nbytes
    # A ring no smaller than the cache saves nothing: full storage, same drafts.
    assert drafter.new_cache(capacity=ring + 1).rings == [None, None, None]
    assert cache.capacity == 200  # the logical capacity the engine sizes spans by


def test_ring_equals_full_storage_over_a_long_context() -> None:
    drafter = _drafter([SLIDE, FULL, SLIDE], window=6, block_size=4)
    total = _features(drafter, 90, seed=3)
    ring_cache = drafter.new_cache(capacity=100)
    full_cache = drafter.new_cache(capacity=100, ring=False)
    assert ring_cache.rings[0] is not None and full_cache.rings[0] is None
    seen = 0
    # Appends longer than the ring (30 > R = 14), single rows, crops within the slack.
    script: list[tuple[str, int]] = [
        ("append", 30), ("draft", 5), ("append", 1), ("draft", 7), ("append", 3),
        ("crop", 2), ("draft", 11), ("append", 5), ("draft", 2), ("crop", 5),
        ("append", 20), ("draft", 3), ("append", 4), ("draft", 8),
    ]  # fmt: skip
    rows = 0
    for op, arg in script:
        if op == "append":
            for cache in (ring_cache, full_cache):
                drafter.append_context(cache, total[:, seen : seen + arg])
            seen += arg
            rows = seen
        elif op == "crop":
            seen -= arg
            for cache in (ring_cache, full_cache):
                cache.crop(seen)
        else:
            block = _block(drafter, arg)
            want = _dense(drafter, block, total[:, :seen], seen)
            want.check(drafter.draft(block, ring_cache, span=seen + 4), what=f"ring at {seen}")
            want.check(drafter.draft(block, full_cache, span=seen + 4), what=f"full at {seen}")
    assert rows > 2 * (6 + 8)
    # One brute-force point ties the dense forward to the explicit key lists.
    block = _block(drafter, 4)
    want = _brute(drafter, block, total[:, :seen], seen)
    want.check(drafter.draft(block, ring_cache, span=seen + 4))


def test_ring_ragged_batch_matches_solo_requests() -> None:
    drafter = _drafter([SLIDE, FULL], window=5, block_size=4)
    feats = _features(drafter, 24, batch=2, seed=6)
    more = _features(drafter, 3, batch=2, seed=8)
    cache = drafter.new_cache(batch_size=2, capacity=60)
    # Request 1's prompt is 9 rows: 15 rows of padding, more than the ring (13) holds.
    drafter.append_context(cache, feats, num_new=torch.tensor([24, 9]))
    drafter.append_context(cache, more, num_new=torch.tensor([3, 1]))
    assert cache.lengths.tolist() == [27, 10]
    got = drafter.draft(drafter.make_block(torch.tensor([3, 40])), cache, span=27 + 4)
    for b, (n, m, bonus) in enumerate([(24, 3, 3), (9, 1, 40)]):
        ctx = torch.cat([feats[b : b + 1, :n], more[b : b + 1, :m]], dim=1)
        _dense(drafter, _block(drafter, bonus), ctx, n + m).check(got[b : b + 1], what=f"b={b}")
    # A round later: each request appends its own count again (counts on the device only).
    last = _features(drafter, 4, batch=2, seed=9)
    drafter.append_context(cache, last, num_new=torch.tensor([2, 4]))
    got = drafter.draft(drafter.make_block(torch.tensor([5, 6])), cache, span=29 + 4)
    for b, (n, m, k, bonus) in enumerate([(24, 3, 2, 5), (9, 1, 4, 6)]):
        ctx = torch.cat([feats[b : b + 1, :n], more[b : b + 1, :m], last[b : b + 1, :k]], dim=1)
        _dense(drafter, _block(drafter, bonus), ctx, n + m + k).check(got[b : b + 1])


def test_draft_branches_on_a_ring() -> None:
    drafter = _drafter([SLIDE, FULL], window=5, block_size=4)
    feats = _features(drafter, 21, batch=2, seed=2)
    rows = torch.tensor([[[7, 3, 1, 1], [7, 1, 1, 1], [7, 3, 9, 1]]] * 2)
    rows[..., 1:][rows[..., 1:] == 1] = drafter.mask_token_id
    rows[1, :, 0] = 12
    results = []
    for ring in (True, False):
        cache = drafter.new_cache(batch_size=2, capacity=21 + 4 + 12 + 8, ring=ring)
        drafter.append_context(cache, feats, num_new=torch.tensor([21, 17]))
        drafter.draft(drafter.make_block(torch.tensor([7, 12])), cache, span=25)  # as a round does
        results.append(drafter.draft_branches(rows, cache, span=25))
    for b, n in enumerate([21, 17]):
        for r in range(3):
            want = _dense(drafter, rows[b : b + 1, r], feats[b : b + 1, :n], n)
            for got in results:
                want.check(got[b : b + 1, r], what=f"b={b} r={r}")


def test_ring_crop_past_its_slack_is_refused() -> None:
    drafter = _drafter([SLIDE], window=4, block_size=4)
    cache = drafter.new_cache(capacity=64)
    drafter.append_context(cache, _features(drafter, 30))
    cache.crop(25)  # within the block + 1 rows the ring keeps for a rollback
    with pytest.raises(ValueError, match="ring"):
        cache.crop(19)
    full = drafter.new_cache(capacity=64, ring=False)
    drafter.append_context(full, _features(drafter, 30))
    full.crop(3)  # full storage: any depth


# ---------------------------------------------------------------------------------------------
# Config: loading as transformers does, round trips, refusals
# ---------------------------------------------------------------------------------------------
def _published(**fields: Any) -> dict[str, Any]:
    raw = _drafter([FULL, FULL]).config.to_dict()
    for key in ("layer_types", "sliding_window", "use_sliding_window", "max_window_layers"):
        raw.pop(key)
    raw.update(fields)
    return raw


@pytest.mark.parametrize(
    "fields",
    [
        {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
        {"use_sliding_window": True, "sliding_window": 8},  # max_window_layers 28: none slide
        {"layer_types": [SLIDE, FULL], "sliding_window": 8},  # window dropped: unwindowed
        {"layer_types": [SLIDE, FULL], "sliding_window": 8, "use_sliding_window": True},
        {"layer_types": [FULL, SLIDE], "use_sliding_window": True, "sliding_window": 3,
         "is_causal": False},
    ],
)  # fmt: skip
def test_window_fields_read_as_qwen3config_reads_them(fields: dict[str, Any]) -> None:
    raw = _published(**fields)
    config = DFlashConfig.from_dict(raw)
    hf = Qwen3Config(**{k: v for k, v in raw.items() if k not in ("dflash_config",)})
    assert config.layer_types == hf.layer_types
    assert [config.layer_window(i) for i in range(2)] == [
        hf.sliding_window if t == SLIDE else None for t in hf.layer_types
    ]
    causal = fields.get("is_causal")
    assert [config.layer_causal(i) for i in range(2)] == [
        (t == SLIDE) if causal is None else causal for t in hf.layer_types
    ]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_config_round_trip(name: str, tmp_path: Path) -> None:
    drafter = _drafter(**VARIANTS[name])
    config = drafter.config
    again = DFlashConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    drafter.save_pretrained(tmp_path)
    target = _target(VARIANTS[name].get("rope", "default"))
    loaded = DFlashDrafter.from_pretrained(tmp_path).bind(target)
    assert loaded.config == config
    feats, block = _features(drafter, 11), _block(drafter, 5)
    for d in (drafter, loaded):
        cache = d.new_cache(capacity=40)
        d.append_context(cache, feats)
        if d is drafter:
            first = d.draft(block, cache)
        else:
            torch.testing.assert_close(d.draft(block, cache), first, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"layer_types": ["linear_attention", FULL]}, "'linear_attention'"),
        ({"layer_types": [FULL, "chunked_attention"]}, "'chunked_attention'"),
        ({"layer_types": [FULL]}, "layer_types has 1 entries for num_hidden_layers=2"),
        ({"layer_types": FULL}, "layer_types must be a list"),
        ({"sliding_window": 0, "use_sliding_window": True}, "sliding_window must be >= 1"),
        ({"sliding_window": "8", "use_sliding_window": True}, "sliding_window must be an integer"),
        ({"use_sliding_window": "yes"}, "use_sliding_window must be true or false"),
        ({"is_causal": "yes"}, "is_causal must be true, false or null"),
        ({"max_window_layers": -1, "use_sliding_window": True, "sliding_window": 4},
         "max_window_layers must be >= 0"),
        ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
         "rope_type 'dynamic' is not supported"),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}},
         "rope_type 'longrope' is not supported"),
        ({"rope_parameters": {"rope_type": "spiral", "rope_theta": 1e4}},
         "unsupported rope_type 'spiral' (static types: "),
        ({"layer_types": [SLIDE, FULL], "use_sliding_window": True, "sliding_window": 4,
          "rope_parameters": {FULL: {"rope_type": "default", "rope_theta": 1e6},
                              SLIDE: {"rope_type": "default", "rope_theta": 1e4}}},
         "rope_parameters.sliding_attention"),
    ],
)  # fmt: skip
def test_refusals_name_the_field(fields: dict[str, Any], message: str) -> None:
    raw = _published(**fields)
    if "rope_parameters" in fields:
        raw.pop("rope_theta"), raw.pop("rope_scaling")
    with pytest.raises(ValueError, match=re.escape(message)):
        DFlashConfig.from_dict(raw)


def test_dflash_config_refusals() -> None:
    raw = _published()
    raw["dflash_config"]["causal"] = 1
    with pytest.raises(ValueError, match=r"dflash_config\.causal must be true, false or null"):
        DFlashConfig.from_dict(raw)
    raw = _published()
    raw["dflash_config"]["use_swa"] = True
    with pytest.raises(ValueError, match="use_swa"):
        DFlashConfig.from_dict(raw)


def test_per_layer_type_rope_tables_that_agree_load() -> None:
    table = {"rope_type": "default", "rope_theta": 1e6}
    raw = _published(
        layer_types=[SLIDE, FULL],
        use_sliding_window=True,
        sliding_window=4,
        rope_parameters={FULL: dict(table), SLIDE: dict(table)},
    )
    raw.pop("rope_theta"), raw.pop("rope_scaling")
    config = DFlashConfig.from_dict(raw)
    assert config.rope_theta == 1e6 and config.layer_window(0) == 4


# ---------------------------------------------------------------------------------------------
# Through the engine: ring caches in the eager, batch and graph-mode (uncaptured) rounds
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def _scratch(
    target: torch.nn.Module, drafter: DFlashDrafter, seq: torch.Tensor, start: int, block: Any
) -> torch.Tensor:
    """Draft logits [1, L, V] from the target features of exactly ``seq[:start]``."""
    feats = drafter.extract_features(target(seq[None, :start], output_hidden_states=True))
    positions = start + torch.arange(block.shape[1])[None]
    return drafter.compute_logits(drafter(block, feats, positions))[:, 1:]


@pytest.mark.parametrize(
    ("policy", "graph"),
    [("chain", False), ("ddtree", True), ("d2sd", False), ("d2sd", True)],
    ids=["chain-eager", "ddtree-graph", "d2sd-eager", "d2sd-graph"],
)
def test_engine_drafts_with_ring_caches(
    policy: str, graph: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from difftree_rt import SpeculativeDecoder

    target = _target()
    drafter = _drafter([SLIDE, FULL, SLIDE], window=6, block_size=4).bind(target)
    t64 = fp64_copy(target)
    d64 = fp64_copy(drafter).bind(t64)
    dec = SpeculativeDecoder(target, drafter, policy, budget=8, cuda_graphs=graph)
    calls: list[tuple[torch.Tensor, list[int], torch.Tensor]] = []
    real = drafter.draft

    def spy(block: torch.Tensor, cache: Any, span: int | None = None) -> torch.Tensor:
        assert cache.rings[0] is not None and cache.rings[1] is None  # windowed layers: rings
        starts = cache.lengths.tolist()
        logits = real(block, cache, span)
        calls.append((block.clone(), starts, logits.clone()))
        return logits

    monkeypatch.setattr(drafter, "draft", spy)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, VOCAB, (n,), generator=gen) for n in (9, 30, 12)]
    out = dec.generate(prompts, 20)
    t = out.sequences.shape[1] - int(out.new_lengths.max())
    got, refs = [], []
    for b, prompt in enumerate(prompts):
        new = out.sequences[b, t : t + int(out.new_lengths[b])]
        want = target.generate(
            prompt[None], max_new_tokens=20, do_sample=False, attention_mask=None
        )[0, prompt.numel() :]
        assert torch.equal(new, want), b  # lossless
        seq = torch.cat([prompt, new])
        start = prompt.numel()
        for r, acc in enumerate(out.request_stats[b].accepted_lengths):
            block, starts, logits = calls[r]
            assert starts[b] == start
            got.append(logits[b : b + 1])
            low = _scratch(target, drafter, seq, start, block[b : b + 1])
            refs.append(Ref(low, _scratch(t64, d64, seq, start, block[b : b + 1])))
            start += acc + 1
    ring = drafter.ring_size(0)
    assert ring is not None and min(p.numel() for p in prompts) + 20 > 2 * ring  # rings wrap
    Ref.cat(refs).check(torch.cat(got), what="draft logits")
