"""TargetAdapter: static KV cache, tree verification, KV commit and feature capture (CPU, fp32).

Every check compares against the unmodified HF model run plainly (its own SDPA attention) on the
equivalent flat sequence.
"""

from __future__ import annotations

import math
import weakref

import pytest
import torch
from tests.tolerance import Ref, fp64_copy
from torch import Tensor
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from difftree_rt.models.target import TargetAdapter
from difftree_rt.models.tree_attention import (
    get_tree_attention_backend,
    set_tree_attention_backend,
    tree_attention,
)
from difftree_rt.reference.attention import anc_to_mask, tree_attention_reference

VOCAB = 256
ARCHS = ["qwen3", "llama", "qwen2", "mistral"]

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    # A wide init spreads the logits so fp32 argmax ties (which would make greedy comparisons
    # meaningless) do not occur.
    initializer_range=0.25,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
    tie_word_embeddings=False,
)


def make_model(arch: str, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    if arch == "qwen3":
        model: PreTrainedModel = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **_COMMON))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**_COMMON))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**_COMMON))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(sliding_window=None, **_COMMON))
    else:
        raise AssertionError(arch)
    return model.eval()


@pytest.fixture(scope="module", params=ARCHS)
def model(request: pytest.FixtureRequest) -> PreTrainedModel:
    return make_model(request.param)


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
_FP64: weakref.WeakKeyDictionary[PreTrainedModel, PreTrainedModel] = weakref.WeakKeyDictionary()


def _fp64(model: PreTrainedModel) -> PreTrainedModel:
    """An fp64 copy of ``model`` (the exact side of the FA-style tolerance rule)."""
    if model not in _FP64:
        _FP64[model] = fp64_copy(model)
    return _FP64[model]


@torch.no_grad()
def plain_logits(model: PreTrainedModel, seq: list[int]) -> Ref:
    """``[T, V]`` logits of the model run plainly on one sequence, in fp32 and in fp64."""
    ids = torch.tensor([seq])
    return Ref(model(ids).logits[0], _fp64(model)(ids).logits[0])


@torch.no_grad()
def plain_hidden(model: PreTrainedModel, seq: list[int]) -> tuple[Ref, ...]:
    ids = torch.tensor([seq])
    low = model(ids, output_hidden_states=True).hidden_states
    exact = _fp64(model)(ids, output_hidden_states=True).hidden_states
    return tuple(Ref(a[0], b[0]) for a, b in zip(low, exact, strict=True))


def random_parents(n: int, gen: torch.Generator) -> list[int]:
    """Random tree with ``parent[i] < i`` (node 0 is the root)."""
    return [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]


def build_tree(
    parents: list[int], n_cap: int, gen: torch.Generator
) -> tuple[list[int], list[int], Tensor, list[list[int]]]:
    """Tokens, depths, anc ``[n_cap, ceil(n_cap/32)]`` int32 and root-to-node paths.

    Rows past ``len(parents)`` are padding: depth 0, self-only ``anc``, random tokens.
    """
    n = len(parents)
    tokens = torch.randint(0, VOCAB, (n_cap,), generator=gen).tolist()
    depth = [0] * n_cap
    paths: list[list[int]] = []
    for i, p in enumerate(parents):
        paths.append([i] if p < 0 else paths[p] + [i])
        depth[i] = len(paths[i]) - 1
    words = (n_cap + 31) // 32
    anc = torch.zeros(n_cap, words, dtype=torch.int64)
    for i in range(n_cap):
        for j in paths[i] if i < n else [i]:
            anc[i, j // 32] |= 1 << (j % 32)
    # Reinterpret as int32 bit patterns (bit 31 becomes the sign bit).
    anc32 = torch.where(anc >= 2**31, anc - 2**32, anc).to(torch.int32)
    return tokens, depth, anc32, paths


def verify_tree(
    adapter: TargetAdapter,
    tokens: list[int],
    depth: list[int],
    anc: Tensor,
    num_nodes: int,
):
    return adapter.verify(
        torch.tensor([tokens]),
        torch.tensor([depth], dtype=torch.int32),
        anc[None],
        torch.tensor([num_nodes], dtype=torch.int32),
    )


# ------------------------------------------------------------------------------------------------
# Prefill + AR decode == HF
# ------------------------------------------------------------------------------------------------
def test_prefill_and_decode_match_hf(model: PreTrainedModel) -> None:
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, VOCAB, (1, 9), generator=gen)
    new = 12
    ref_seq = model.generate(
        prompt, max_new_tokens=new, do_sample=False, pad_token_id=0, attention_mask=None
    )[0].tolist()

    adapter = TargetAdapter(model, max_length=64)
    out = adapter.prefill(prompt)
    seq = prompt[0].tolist()
    plain_logits(model, seq).check(out.logits[0])
    assert out.features is None
    logits = out.logits[:, -1]
    for _ in range(new):
        tok = int(logits.argmax(-1))
        seq.append(tok)
        out = adapter.decode(torch.tensor([[tok]]))
        logits = out.logits[:, -1]
        plain_logits(model, seq)[-1].check(logits[0])
    assert seq == ref_seq
    assert adapter.base_len.tolist() == [len(seq)]
    # The wrapped model is left a plain HF model.
    assert model.config._attn_implementation == "sdpa"


def test_chunked_prefill_and_reset(model: PreTrainedModel) -> None:
    gen = torch.Generator().manual_seed(2)
    seq = torch.randint(0, VOCAB, (1, 13), generator=gen)
    adapter = TargetAdapter(model, max_length=32)
    a = adapter.prefill(seq[:, :5]).logits
    b = adapter.prefill(seq[:, 5:]).logits
    ref = plain_logits(model, seq[0].tolist())
    ref.check(torch.cat([a, b], 1)[0])
    adapter.reset()
    assert adapter.base_len.tolist() == [0]
    last = adapter.prefill(seq, last_logits_only=True).logits
    assert last.shape == (1, 1, VOCAB)
    ref[-1].check(last[0, 0])


# ------------------------------------------------------------------------------------------------
# Tree verification
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_nodes,n_cap", [(11, 14), (37, 40)])
def test_verify_tree_matches_paths(model: PreTrainedModel, num_nodes: int, n_cap: int) -> None:
    gen = torch.Generator().manual_seed(3 + num_nodes)
    prompt = torch.randint(0, VOCAB, (1, 7), generator=gen)
    parents = random_parents(num_nodes, gen)
    tokens, depth, anc, paths = build_tree(parents, n_cap, gen)

    adapter = TargetAdapter(model, max_length=64, feature_layers=[1, 0])
    adapter.prefill(prompt)
    out = verify_tree(adapter, tokens, depth, anc, num_nodes)
    assert out.logits.shape == (1, n_cap, VOCAB)
    assert out.features is not None and out.features.shape == (1, n_cap, 2 * 64)
    assert adapter.base_len.tolist() == [7]  # verify commits nothing

    base = prompt[0].tolist()
    for i in range(num_nodes):
        seq = base + [tokens[j] for j in paths[i]]
        hidden = plain_hidden(model, seq)
        plain_logits(model, seq)[-1].check(out.logits[0, i])
        feat = Ref.cat([hidden[2][-1], hidden[1][-1]])
        feat.check(out.features[0, i])

    # Padding rows never affect valid rows: other padding tokens, bit-identical valid rows.
    tokens2 = tokens[:num_nodes] + [(t + 1) % VOCAB for t in tokens[num_nodes:]]
    out2 = verify_tree(adapter, tokens2, depth, anc, num_nodes)
    assert torch.equal(out2.logits[0, :num_nodes], out.logits[0, :num_nodes])
    assert not torch.equal(out2.logits[0, num_nodes:], out.logits[0, num_nodes:])


def test_verify_chain_without_anc_and_uint32_anc(model: PreTrainedModel) -> None:
    gen = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, VOCAB, (1, 6), generator=gen)
    n = 9
    tokens, depth, anc, _ = build_tree([-1, *range(n - 1)], n, gen)
    adapter = TargetAdapter(model, max_length=32)
    adapter.prefill(prompt)
    ids = torch.tensor([tokens])
    dep = torch.tensor([depth])
    tree = adapter.verify(ids, dep, anc[None]).logits
    chain = adapter.verify(ids, dep, None).logits
    unsigned = adapter.verify(ids, dep, anc[None].view(torch.uint32)).logits
    assert torch.equal(unsigned, tree)
    ref = plain_logits(model, prompt[0].tolist() + tokens)[-n:]
    ref.check(tree[0])
    ref.check(chain[0])  # the causal fast path, as close to the exact logits


# ------------------------------------------------------------------------------------------------
# Commit
# ------------------------------------------------------------------------------------------------
def _commit_then_decode(model: PreTrainedModel, path_nodes: list[int], validate: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    prompt = torch.randint(0, VOCAB, (1, 8), generator=gen)
    # Fixed tree holding the chains 0-1-2-3 and 0-2?: use parents so that 0,2,5 is a path.
    parents = [-1, 0, 0, 1, 2, 2, 5, 3]
    tokens, depth, anc, paths = build_tree(parents, 10, gen)
    assert paths[path_nodes[-1]] == path_nodes
    adapter = TargetAdapter(model, max_length=40, validate=validate)
    adapter.prefill(prompt)
    verified = verify_tree(adapter, tokens, depth, anc, len(parents))
    accepted = len(path_nodes) - 1
    max_depth = 4
    # Path padded to L+1 entries with junk past `accepted` (must be ignored).
    path = path_nodes + [9] * (max_depth + 1 - len(path_nodes))
    adapter.commit(torch.tensor([path], dtype=torch.int32), torch.tensor([accepted]))
    seq = prompt[0].tolist() + [tokens[j] for j in path_nodes]
    assert adapter.base_len.tolist() == [len(seq)]
    # The verify output for the last path node is the next-token distribution.
    logits = verified.logits[:, path_nodes[-1]]
    for _ in range(5):
        tok = int(logits.argmax(-1))
        seq.append(tok)
        logits = adapter.decode(torch.tensor([[tok]])).logits[:, -1]
        plain_logits(model, seq)[-1].check(logits[0])


@pytest.mark.parametrize(
    "path_nodes", [[0, 2, 5], [0, 2, 5, 6], [0, 1, 3, 7], [0], [0, 1]], ids=str
)
def test_commit_path_then_decode(model: PreTrainedModel, path_nodes: list[int]) -> None:
    _commit_then_decode(model, path_nodes, validate=True)


def test_commit_without_validation(model: PreTrainedModel) -> None:
    _commit_then_decode(model, [0, 2, 5, 6], validate=False)


def test_batch_of_two_requests() -> None:
    """Per-request prefix lengths: different trees and accepted paths, then AR decode."""
    model = make_model("qwen3", seed=4)
    gen = torch.Generator().manual_seed(11)
    prompts = torch.randint(0, VOCAB, (2, 6), generator=gen)
    parents = [[-1, 0, 0, 1, 2, 2], [-1, 0, 1, 1, 3, 0]]
    trees = [build_tree(p, 6, gen) for p in parents]
    paths_acc = [[0, 2, 5], [0, 1, 3, 4]]
    adapter = TargetAdapter(model, max_length=32, batch_size=2, feature_layers=[0])
    adapter.prefill(prompts)
    out = adapter.verify(
        torch.tensor([t[0] for t in trees]),
        torch.tensor([t[1] for t in trees]),
        torch.stack([t[2] for t in trees]),
        torch.tensor([6, 6], dtype=torch.int32),
    )
    for b in range(2):
        for i in range(6):
            seq = prompts[b].tolist() + [trees[b][0][j] for j in trees[b][3][i]]
            plain_logits(model, seq)[-1].check(out.logits[b, i])
    path = torch.tensor([[0, 2, 5, 0], [0, 1, 3, 4]])
    accepted = torch.tensor([2, 3])
    assert out.features is not None
    gathered = adapter.gather_path(out.features, path)
    assert torch.equal(gathered[1], out.features[1, [0, 1, 3, 4]])
    adapter.commit(path, accepted)
    seqs = [prompts[b].tolist() + [trees[b][0][j] for j in paths_acc[b]] for b in range(2)]
    assert adapter.base_len.tolist() == [len(s) for s in seqs]
    logits = torch.stack([out.logits[b, paths_acc[b][-1]] for b in range(2)])
    for _ in range(4):
        tok = logits.argmax(-1)
        for b in range(2):
            seqs[b].append(int(tok[b]))
        logits = adapter.decode(tok[:, None]).logits[:, -1]
        for b in range(2):
            ref = plain_logits(model, seqs[b])[-1]
            ref.check(logits[b])


# ------------------------------------------------------------------------------------------------
# Feature capture
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [[0], [1], [1, 0], [0, 1, 0]], ids=str)
def test_prefill_features_match_hidden_states(model: PreTrainedModel, layers: list[int]) -> None:
    gen = torch.Generator().manual_seed(13)
    seq = torch.randint(0, VOCAB, (1, 10), generator=gen)
    adapter = TargetAdapter(model, max_length=16, feature_layers=layers)
    out = adapter.prefill(seq)
    hidden = plain_hidden(model, seq[0].tolist())
    ref = Ref.cat([hidden[j + 1] for j in layers], dim=-1)
    assert out.features is not None and out.features.shape == (1, 10, 64 * len(layers))
    assert adapter.feature_dim == 64 * len(layers)
    ref.check(out.features[0])
    dec = adapter.decode(torch.tensor([[3]]))
    hidden = plain_hidden(model, [*seq[0].tolist(), 3])
    ref = Ref.cat([hidden[j + 1][-1] for j in layers], dim=-1)
    assert dec.features is not None
    ref.check(dec.features[0, 0])


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
def test_capacity_overflow_raises() -> None:
    model = make_model("llama")
    adapter = TargetAdapter(model, max_length=12)
    with pytest.raises(
        ValueError, match=r"context of 13 tokens exceeds the cache capacity S_max=12"
    ):
        adapter.prefill(torch.zeros(1, 13, dtype=torch.long))
    adapter.prefill(torch.zeros(1, 8, dtype=torch.long))
    gen = torch.Generator().manual_seed(0)
    tokens, depth, anc, _ = build_tree([-1, 0, 0, 1, 1], 5, gen)
    with pytest.raises(ValueError, match=r"tree_tokens: context of 13 tokens exceeds .*S_max=12"):
        verify_tree(adapter, tokens, depth, anc, 5)
    verify_tree(adapter, tokens[:4], depth[:4], anc[:4], 4)  # exactly fills the cache
    adapter.commit(torch.tensor([[0, 1, 3]]), torch.tensor([2]))
    adapter.decode(torch.tensor([[1]]))  # 12 rows
    with pytest.raises(ValueError, match=r"token: context of 13 tokens exceeds .*S_max=12"):
        adapter.decode(torch.tensor([[1]]))


def test_capacity_check_with_loose_bound() -> None:
    """validate=False keeps a loose host bound; the check then reads the real lengths."""
    model = make_model("qwen2")
    adapter = TargetAdapter(model, max_length=12, validate=False)
    adapter.prefill(torch.zeros(1, 6, dtype=torch.long))
    gen = torch.Generator().manual_seed(0)
    tokens, depth, anc, _ = build_tree([-1, 0, 1, 2, 3], 5, gen)
    verify_tree(adapter, tokens, depth, anc, 5)
    adapter.commit(torch.tensor([[0, 1, 2, 3, 4]]), torch.tensor([0]))  # bound 11, real 7
    verify_tree(adapter, tokens, depth, anc, 5)  # 7 + 5 <= 12: must not raise
    adapter.commit(torch.tensor([[0, 1, 2, 3, 4]]), torch.tensor([4]))  # real 12
    with pytest.raises(ValueError, match="exceeds the cache capacity"):
        adapter.decode(torch.tensor([[0]]))


def test_bad_arguments_raise() -> None:
    model = make_model("qwen3")
    adapter = TargetAdapter(model, max_length=32, batch_size=1)
    with pytest.raises(ValueError, match="input_ids must have shape"):
        adapter.prefill(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids must have shape"):
        adapter.prefill(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
        adapter.prefill(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"input_ids: token ids must be in \[0, V=256\)"):
        adapter.prefill(torch.full((1, 5), VOCAB))
    with pytest.raises(ValueError, match="token must be"):
        adapter.decode(torch.zeros(1, 2, dtype=torch.long))
    adapter.prefill(torch.zeros(1, 5, dtype=torch.long))
    ids = torch.zeros(1, 4, dtype=torch.long)
    dep = torch.tensor([[0, 1, 1, 2]])
    anc = torch.tensor([[[1], [3], [5], [11]]], dtype=torch.int32)
    with pytest.raises(ValueError, match="depth must have shape"):
        adapter.verify(ids, dep[:, :3], anc)
    with pytest.raises(ValueError, match=r"anc must have shape \[1, 4, 1\]"):
        adapter.verify(ids, dep, anc[:, :3])
    with pytest.raises(ValueError, match="anc must be int32 or uint32"):
        adapter.verify(ids, dep, anc.long())
    with pytest.raises(ValueError, match="num_nodes must have shape"):
        adapter.verify(ids, dep, anc, torch.tensor([4, 4]))
    with pytest.raises(ValueError, match="num_nodes must be in"):
        adapter.verify(ids, dep, anc, torch.tensor([5]))
    with pytest.raises(ValueError, match="depth must be in"):
        adapter.verify(ids, torch.tensor([[0, 1, 1, 4]]), anc)
    with pytest.raises(ValueError, match="commit\\(\\) needs a preceding verify"):
        adapter.commit(torch.tensor([[0, 1]]), torch.tensor([1]))
    adapter.verify(ids, dep, anc)
    with pytest.raises(ValueError, match="accepted must be in"):
        adapter.commit(torch.tensor([[0, 1]]), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"path\[:, 0\] must be 0"):
        adapter.commit(torch.tensor([[1, 2]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="strictly increasing"):
        adapter.commit(torch.tensor([[0, 3, 2]]), torch.tensor([2]))
    with pytest.raises(ValueError, match="path has 5 entries but the verified tree has N=4"):
        adapter.commit(torch.zeros(1, 5, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(ValueError, match="accepted must have shape"):
        adapter.commit(torch.tensor([[0, 1]]), torch.tensor([[1]]))


def test_unsupported_models_and_config_raise() -> None:
    with pytest.raises(ValueError, match=r"model must be a torch nn\.Module"):
        TargetAdapter(object(), max_length=8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model: unsupported model Linear: no `config`"):
        TargetAdapter(torch.nn.Linear(2, 2), max_length=8)
    model = make_model("qwen3")
    with pytest.raises(
        ValueError, match=r"feature_layers: 2 is not a decoder layer id in \[0, 2\)"
    ):
        TargetAdapter(model, max_length=8, feature_layers=[0, 2])
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        TargetAdapter(model, max_length=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        TargetAdapter(model, max_length=8, batch_size=0)
    torch.manual_seed(0)
    windowed = MistralForCausalLM(MistralConfig(sliding_window=16, **_COMMON))
    # A context longer than the window is allowed: the window is honoured per layer, and with a
    # bound on one forward's rows its layers keep rings of W - 1 + T_max rows.
    assert not TargetAdapter(windowed, max_length=64).cache.has_rings
    ringed = TargetAdapter(windowed, max_length=64, max_forward_rows=4, prefill_chunk=4)
    assert ringed.cache.has_rings and ringed.cache.key_cache[0].shape[2] == 16 - 1 + 4
    with pytest.raises(ValueError, match="max_forward_rows must be a positive int"):
        TargetAdapter(windowed, max_length=64, max_forward_rows=0)


# ------------------------------------------------------------------------------------------------
# The attention function itself (the seam the CUDA kernel plugs into)
# ------------------------------------------------------------------------------------------------
def _dense_reference(
    q: Tensor, k: Tensor, v: Tensor, prefix_len: Tensor, vis: Tensor, scale: float
) -> Tensor:
    """Dense-mask SDPA over the full cache (what tree attention avoids), per request."""
    num_b, h_q, n, _ = q.shape
    h_kv, s_max = k.shape[1], k.shape[2]
    outs = []
    for b in range(num_b):
        p = int(prefix_len[b])
        mask = torch.zeros(n, s_max, dtype=torch.bool)
        mask[:, :p] = True
        mask[:, p : p + n] = vis[b]
        kb = k[b].repeat_interleave(h_q // h_kv, dim=0)
        vb = v[b].repeat_interleave(h_q // h_kv, dim=0)
        outs.append(
            torch.nn.functional.scaled_dot_product_attention(
                q[b], kb, vb, attn_mask=mask, scale=scale
            )
        )
    return torch.stack(outs)


@pytest.mark.parametrize("causal", [False, True])
def test_tree_attention_reference_vs_dense_mask(causal: bool) -> None:
    gen = torch.Generator().manual_seed(21)
    num_b, h_q, h_kv, n, d, s_max = 3, 8, 2, 35, 16, 96
    q = torch.randn(num_b, h_q, n, d, generator=gen)
    k = torch.randn(num_b, h_kv, s_max, d, generator=gen)
    v = torch.randn(num_b, h_kv, s_max, d, generator=gen)
    prefix_len = torch.tensor([0, 17, 50], dtype=torch.int32)
    if causal:
        anc = None
        vis = torch.ones(n, n, dtype=torch.bool).tril().expand(num_b, n, n)
    else:
        ancs = [build_tree(random_parents(30, gen), n, gen)[2] for _ in range(num_b)]
        anc = torch.stack(ancs)
        vis = anc_to_mask(anc, n)
        assert int(vis[:, 30:, :].sum()) == num_b * (n - 30)  # padding rows: self bit only
    scale = d**-0.5
    ref = Ref(
        _dense_reference(q, k, v, prefix_len, vis, scale),
        _dense_reference(q.double(), k.double(), v.double(), prefix_len, vis, scale),
    )
    for bound in (None, 50, 60):
        ref.check(tree_attention(q, k, v, prefix_len, anc, None, scale, kv_bound=bound))


def test_anc_to_mask_bit31() -> None:
    n = 40
    gen = torch.Generator().manual_seed(0)
    _, _, anc, paths = build_tree([-1, *range(n - 1)], n, gen)  # chain: bit 31 used
    vis = anc_to_mask(anc[None], n)[0]
    assert torch.equal(vis, torch.ones(n, n, dtype=torch.bool).tril())
    assert math.ceil(n / 32) == anc.shape[-1] and paths[-1] == list(range(n))


def test_backend_seam_is_tried_first() -> None:
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 3, 8, generator=gen)
    k = torch.randn(1, 2, 10, 8, generator=gen)
    v = torch.randn(1, 2, 10, 8, generator=gen)
    prefix_len = torch.tensor([4])
    calls: list[tuple[int, ...]] = []

    def declining(q: Tensor, *args: object, **kwargs: object) -> Tensor | None:
        calls.append(tuple(q.shape))
        return None

    def replacing(q: Tensor, *args: object, **kwargs: object) -> Tensor | None:
        return torch.zeros_like(q)

    assert get_tree_attention_backend() is None
    try:
        set_tree_attention_backend(declining)
        out = tree_attention(q, k, v, prefix_len, None, None, 0.5)
        assert calls == [(1, 4, 3, 8)]
        ref = tree_attention_reference(q, k, v, prefix_len, None, None, 0.5)
        assert torch.equal(out, ref)
        set_tree_attention_backend(replacing)
        assert torch.equal(
            tree_attention(q, k, v, prefix_len, None, None, 0.5), torch.zeros_like(q)
        )
    finally:
        set_tree_attention_backend(None)


def _old_hf_slice(hidden: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """transformers <= 5.17's slicing: ``hidden[:, slice(-k, None)]`` or ``hidden[:, tensor]``
    (a 2-D tensor then indexes, [B, B, 1, H], instead of gathering per request)."""
    keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
    return hidden[:, keep, :]


@pytest.mark.parametrize("hf_slicing", ["installed", "transformers-5.17"])
def test_prefill_right_padded_lengths(hf_slicing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``prefill(lengths=...)``: each request at positions 0..T_b-1, padding not committed,
    last-row logits per request, equal to prefilling the request alone — whatever the
    transformers version does with a tensor ``logits_to_keep`` (the GPU image's 5.17 indexed
    instead of gathering, which broke batched prefill there)."""
    if hf_slicing != "installed":
        import transformers.models.qwen3.modeling_qwen3 as qwen3

        if not hasattr(qwen3, "slice_logits_to_keep"):
            pytest.skip("this transformers inlines its slicing (it is the old behaviour)")
        monkeypatch.setattr(qwen3, "slice_logits_to_keep", _old_hf_slice)
    model = make_model("qwen3")
    gen = torch.Generator().manual_seed(0)
    lens = [3, 7, 1]
    ids = torch.randint(0, model.config.vocab_size, (3, 7), generator=gen)
    batch = TargetAdapter(model, max_length=16, batch_size=3, feature_layers=[0])
    out = batch.prefill(ids, last_logits_only=True, lengths=lens)
    assert out.logits.shape == (3, 1, model.config.vocab_size)
    assert batch.base_len.tolist() == lens
    for b, n in enumerate(lens):
        solo = TargetAdapter(model, max_length=16, feature_layers=[0])
        ref = solo.prefill(ids[b : b + 1, :n], last_logits_only=True)
        exact = TargetAdapter(_fp64(model), max_length=16, feature_layers=[0]).prefill(
            ids[b : b + 1, :n], last_logits_only=True
        )
        Ref(ref.logits[0], exact.logits[0]).check(out.logits[b])
        assert out.features is not None and ref.features is not None
        assert exact.features is not None
        Ref(ref.features[0], exact.features[0]).check(out.features[b, :n])
    with pytest.raises(ValueError, match="lengths"):
        batch.prefill(ids, lengths=[3, 8, 1])
