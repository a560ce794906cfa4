"""DFlash drafter training: mask exactness, loss decrease, exact resume, published format.

Vocabulary: B batch, T sequence length, m anchors, S block size, F feature width.
"""

from __future__ import annotations

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from difftree_rt.models import DFlashDrafter
from difftree_rt.train.corpus import TokenStream
from difftree_rt.train.drafter import (
    DrafterTrainConfig,
    block_attention_mask,
    build_blocks,
    make_drafter,
    sample_anchors,
    sample_prefix_lengths,
    slot_weights,
    target_features,
    train_drafter,
)


def _target(vocab: int = 32, seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=256,
        initializer_range=0.3,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return Qwen3ForCausalLM(cfg).eval()


def _stream(vocab: int = 32, n: int = 4000, seed: int = 0) -> TokenStream:
    """A learnable stream: a noisy repeating pattern."""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n) % 7 * 3 % vocab
    noise = torch.randint(0, vocab, (n,), generator=g)
    keep = torch.rand(n, generator=g) < 0.9
    return TokenStream(torch.where(keep, base, noise))


def _cfg(**kw: object) -> DrafterTrainConfig:
    base: dict[str, object] = dict(
        steps=4,
        batch_size=4,
        context=48,
        anchors=4,
        lr=3e-3,
        block_size=8,
        warmup=2,
        log_every=1,
        autocast=False,
        mask_token_id=31,
        num_feature_layers=2,
    )
    base.update(kw)
    return DrafterTrainConfig(**base)  # type: ignore[arg-type]


def test_block_mask_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    anchors = sample_anchors(3, 40, 8, 5, g)  # [B, m]
    assert anchors.shape == (3, 5)
    assert bool((anchors >= 1).all()) and bool((anchors <= 32).all())
    assert all(len(set(r.tolist())) == 5 for r in anchors)
    mask = block_attention_mask(anchors, 40, 8)
    assert mask.shape == (3, 40, 40 + 40)
    for b in range(3):
        for q in range(40):
            j = q // 8
            for t in range(40):
                assert bool(mask[b, q, t]) == (t < int(anchors[b, j]))
            for r in range(40):
                assert bool(mask[b, q, 40 + r]) == (r // 8 == j)


def test_block_sees_only_past_context_and_itself() -> None:
    """Perturbing features at t >= anchor or another block's tokens leaves a block unchanged."""
    target = _target()
    drafter = make_drafter(target, _cfg())
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 31, (1, 48), generator=g)
    anchors = torch.tensor([[5, 20, 33]])
    feats = target_features(target, tokens, drafter.target_layer_ids, autocast=False)
    ids, pos, _ = build_blocks(tokens, anchors, 8, drafter.mask_token_id)
    mask = block_attention_mask(anchors, 48, 8)
    with torch.no_grad():
        ref = drafter(ids, feats, pos, attention_mask=mask)
        f2 = feats.clone()
        f2[:, 20:] += torch.randn_like(f2[:, 20:])  # future of block 1's anchor
        ids2 = ids.clone()
        ids2[0, 0] = (ids2[0, 0] + 1) % 31  # block 0's bonus token
        ids2[0, 16] = (ids2[0, 16] + 1) % 31  # block 2's bonus token
        out = drafter(ids2, f2, pos, attention_mask=mask)
    assert torch.equal(out[0, 8:16], ref[0, 8:16])  # block 1 is blind to all of that
    assert not torch.allclose(out[0, 0:8], ref[0, 0:8])  # block 0 sees its own token
    assert not torch.allclose(out[0, 16:24], ref[0, 16:24])  # block 2 sees changed features


def test_blocks_weights_and_prefix() -> None:
    tokens = torch.arange(40)[None]
    anchors = torch.tensor([[3, 10]])
    prefix = torch.tensor([[0, 2]])
    ids, pos, labels = build_blocks(tokens, anchors, 5, 99, prefix)
    assert ids.tolist() == [[3, 99, 99, 99, 99, 10, 11, 12, 99, 99]]
    assert pos.tolist() == [[3, 4, 5, 6, 7, 10, 11, 12, 13, 14]]
    assert labels.tolist() == [[[4, 5, 6, 7], [11, 12, 13, 14]]]
    w = slot_weights(5, 2.0, prefix)
    assert torch.allclose(w.sum(-1), torch.ones(1, 2))
    assert w[0, 1, :2].tolist() == [0.0, 0.0]
    ratio = torch.tensor([1.0, float(torch.exp(torch.tensor(-0.5)))])
    assert torch.allclose(w[0, 1, 2:] / w[0, 1, 2], ratio)
    assert torch.allclose(w[0, 0], slot_weights(5, 2.0, torch.zeros(1, 1, dtype=torch.long))[0, 0])
    p = sample_prefix_lengths((2000,), 16, 0.3, torch.Generator().manual_seed(0))
    assert int(p.min()) == 0 and int(p.max()) <= 14 and (p == 0).float().mean() > 0.2


def test_loss_decreases() -> None:
    target = _target()
    res = train_drafter(target, _stream(), _cfg(steps=60, lr=1e-2), progress=False)
    first = sum(r["loss"] for r in res.log[:3]) / 3
    assert res.finished and res.step == 60
    assert res.log[-1]["loss"] < 0.8 * first, (first, res.log[-1])
    assert all(not p.requires_grad for p in target.parameters())


def test_variable_prefix_trains() -> None:
    res = train_drafter(_target(), _stream(), _cfg(steps=5, prefix_geom=0.3), progress=False)
    assert res.finished and torch.isfinite(torch.tensor(res.log[-1]["loss"]))


def test_resume_reproduces_next_step(tmp_path) -> None:
    target = _target()
    cfg = _cfg(steps=4)
    straight = train_drafter(target, _stream(), cfg, progress=False).drafter
    ckpt = tmp_path / "d.ckpt"
    first = train_drafter(target, _stream(), cfg, ckpt, max_seconds=0.0, progress=False)
    assert first.step == 1 and not first.finished and ckpt.exists()
    resumed = train_drafter(target, _stream(), cfg, ckpt, progress=False)
    assert resumed.step == 4 and resumed.finished
    a, b = straight.state_dict(), resumed.drafter.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_saved_drafter_loads_and_binds(tmp_path) -> None:
    target = _target()
    res = train_drafter(target, _stream(), _cfg(steps=2), progress=False)
    res.drafter.save_pretrained(tmp_path / "drafter")
    loaded = DFlashDrafter.from_pretrained(tmp_path / "drafter")
    assert loaded.check_target(target) == []
    loaded.bind(target)
    assert loaded.mask_token_id == 31 and loaded.block_size == 8
    tokens = torch.randint(0, 31, (1, 20))
    feats = target_features(target, tokens, loaded.target_layer_ids, autocast=False)
    block = loaded.make_block(tokens[:, -1])
    pos = torch.arange(20, 28)[None]
    with torch.no_grad():
        assert torch.allclose(loaded(block, feats, pos), res.drafter(block, feats, pos), atol=1e-6)
