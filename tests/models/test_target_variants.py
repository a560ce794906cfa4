"""TargetAdapter on the attention-variant targets: tree verify and commit against brute force.

gpt-oss (sliding window W = 8 on alternate layers, attention sinks), Gemma-4 (per-layer head
sizes, sliding layers, KV-sharing layers; also ``attention_k_eq_v``) and DeepSeek-V3 (latent
attention), tiny random fp32 configs (tests/engine/variant_targets.py). Windowed layers run on
full-length caches and on rings of ``W - 1 + T_max`` rows (``max_forward_rows`` given, a small
prefill chunk), with committed prefixes shorter and longer than the window and than the ring.

Brute force: each root-to-node path run through the plain HF model as an ordinary sequence after
the committed prefix (transformers' own window masks, sinks, KV sharing and latent attention);
logits compared with the FA-style rule of tests/tolerance.py.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import torch
from tests.engine.variant_targets import FAMILIES, WINDOW, WINDOWED, make_variant_target
from tests.tolerance import Ref, fp64_copy
from torch import Tensor
from transformers import PreTrainedModel

from difftree_rt.models.target import TargetAdapter

VOCAB = 128
S_MAX = 96
MOE = ("gptoss", "deepseek")
N_CAP = 16  # tree rows of one verify (T_max): rings of W - 1 + 16 = 23 rows
RING_CHUNK = 4

CASES = [(f, r) for f in FAMILIES for r in ((True, False) if f in WINDOWED else (False,))]
CASE_IDS = [f"{f}-{'rings' if r else 'full'}" for f, r in CASES]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny models: one thread is fastest and immune to oversubscribed CI machines.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@functools.cache
def _model(family: str) -> PreTrainedModel:
    return make_variant_target(family, vocab=VOCAB)


@functools.cache
def _fp64(family: str) -> PreTrainedModel:
    fp64 = fp64_copy(_model(family))
    if hasattr(fp64, "set_experts_implementation"):  # MoE: grouped_mm has no fp64 kernel
        fp64.set_experts_implementation("eager")
    return fp64


def _adapter(model: PreTrainedModel, rings: bool, batch_size: int = 1) -> TargetAdapter:
    """An adapter with every layer at S_MAX rows, or windowed layers on rings."""
    kw = dict(max_forward_rows=N_CAP, prefill_chunk=RING_CHUNK) if rings else {}
    adapter = TargetAdapter(
        model, max_length=S_MAX, batch_size=batch_size, feature_layers=[0], **kw
    )
    assert adapter.cache.has_rings == rings
    if rings:
        rows = {k.shape[2] for k in adapter.cache.key_cache if k is not None}
        assert WINDOW - 1 + N_CAP in rows
    return adapter


@torch.no_grad()
def _plain(family: str, seq: list[int]) -> tuple[Ref, Ref]:
    """Last-row logits ``[V]`` and layer-0 output ``[hidden]`` of the plain HF model on ``seq``,
    in fp32 and fp64."""
    ids = torch.tensor([seq])
    low = _model(family)(ids, output_hidden_states=True)
    exact = _fp64(family)(ids, output_hidden_states=True)
    return (
        Ref(low.logits[0, -1], exact.logits[0, -1]),
        Ref(low.hidden_states[1][0, -1], exact.hidden_states[1][0, -1]),
    )


def _random_tree(
    num_nodes: int, gen: torch.Generator, deep: bool = False
) -> tuple[list[int], list[int], Tensor, list[list[int]]]:
    """Tokens ``[N_CAP]``, depths, anc ``[N_CAP, 1]`` int32 and root-to-node paths of a random
    tree (``parent[i] < i``; ``deep``: parents among the last three nodes, long paths). Rows
    past ``num_nodes`` are padding (depth 0, self only)."""
    parents = [-1]
    for i in range(1, num_nodes):
        lo = max(0, i - 3) if deep else 0
        parents.append(int(torch.randint(lo, i, (1,), generator=gen)))
    tokens = torch.randint(0, VOCAB, (N_CAP,), generator=gen).tolist()
    paths: list[list[int]] = []
    for i, p in enumerate(parents):
        paths.append([i] if p < 0 else [*paths[p], i])
    depth = [len(paths[i]) - 1 if i < num_nodes else 0 for i in range(N_CAP)]
    bits = [sum(1 << j for j in (paths[i] if i < num_nodes else [i])) for i in range(N_CAP)]
    anc = torch.tensor(bits, dtype=torch.int64)[:, None]
    anc = torch.where(anc >= 2**31, anc - 2**32, anc).to(torch.int32)
    return tokens, depth, anc, paths


def _verify(adapter: TargetAdapter, trees: list[tuple], num_nodes: list[int]):
    return adapter.verify(
        torch.tensor([t[0] for t in trees]),
        torch.tensor([t[1] for t in trees], dtype=torch.int32),
        torch.stack([t[2] for t in trees]),
        torch.tensor(num_nodes, dtype=torch.int32),
    )


# ------------------------------------------------------------------------------------------------
# Verify == brute force
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", [WINDOW - 1, 37], ids=["prefix-in-window", "prefix-past-ring"])
@pytest.mark.parametrize("family,rings", CASES, ids=CASE_IDS)
def test_verify_random_tree_equals_paths_run_plainly(family: str, rings: bool, prefix: int) -> None:
    # W - 1 committed rows: deeper nodes cross the window inside the tree; 37 > the ring's 23
    # rows: the prefill (chunks of 16) wrapped the ring.
    model = _model(family)
    gen = torch.Generator().manual_seed(prefix + 7 * FAMILIES.index(family))
    base = torch.randint(0, VOCAB, (prefix,), generator=gen).tolist()
    num_nodes = 13
    tree = _random_tree(num_nodes, gen, deep=prefix < WINDOW)
    tokens, _, _, paths = tree
    adapter = _adapter(model, rings)
    adapter.prefill(torch.tensor([base]))
    out = _verify(adapter, [tree], [num_nodes])
    assert out.logits.shape == (1, N_CAP, VOCAB)
    assert adapter.base_len.tolist() == [prefix]  # verify commits nothing
    assert max(len(p) for p in paths) >= 4
    refs = []
    for i in range(num_nodes):
        logits, hidden = _plain(family, base + [tokens[j] for j in paths[i]])
        logits.check(out.logits[0, i], what=f"node {i} logits")
        assert out.features is not None
        hidden.check(out.features[0, i], what=f"node {i} layer-0 output")
        refs.append(logits)
    # Padding rows never affect valid rows: bit-identical, except through an MoE layer, whose
    # grouped expert GEMMs round a row differently with other rows routed alongside it.
    other = (tree[0][:num_nodes] + [(t + 1) % VOCAB for t in tree[0][num_nodes:]], *tree[1:])
    again = _verify(adapter, [other], [num_nodes])
    if family not in MOE:
        assert torch.equal(again.logits[0, :num_nodes], out.logits[0, :num_nodes])
    for i, ref in enumerate(refs):
        ref.check(again.logits[0, i], what=f"node {i} logits, other padding")


@pytest.mark.parametrize("family", WINDOWED)
def test_verify_batch_of_two_prefixes_on_rings(family: str) -> None:
    # Right-padded prefill of 5 and 40 tokens (chunked: the long one wraps its ring), then one
    # tree per request.
    model = _model(family)
    gen = torch.Generator().manual_seed(5)
    lens = [5, 40]
    ids = torch.randint(0, VOCAB, (2, 40), generator=gen)
    adapter = _adapter(model, rings=True, batch_size=2)
    adapter.prefill(ids, lengths=lens)
    trees = [_random_tree(11, gen, deep=True), _random_tree(9, gen)]
    out = _verify(adapter, trees, [11, 9])
    for b, (tree, n) in enumerate(zip(trees, (11, 9), strict=True)):
        for i in range(n):
            seq = ids[b, : lens[b]].tolist() + [tree[0][j] for j in tree[3][i]]
            _plain(family, seq)[0].check(out.logits[b, i], what=f"request {b} node {i}")


# ------------------------------------------------------------------------------------------------
# Commit == a fresh prefill of the committed sequence
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,rings", CASES, ids=CASE_IDS)
def test_commit_equals_fresh_prefill(family: str, rings: bool) -> None:
    # Rounds of verify + commit of a deep random path: the committed sequence grows from 6 rows
    # past the window and past the ring's 23 slots (rows committed in place, wrapping). After
    # every commit the next tree's verify logits equal those of a fresh adapter prefilled with
    # the committed sequence (its fp32 and fp64 runs bound the difference).
    model = _model(family)
    gen = torch.Generator().manual_seed(11 + FAMILIES.index(family))
    seq = torch.randint(0, VOCAB, (6,), generator=gen).tolist()
    adapter = _adapter(model, rings)
    adapter.prefill(torch.tensor([seq]))
    tree = _random_tree(13, gen, deep=True)
    out = _verify(adapter, [tree], [13])
    for _ in range(7):
        tokens, depth, _, paths = tree
        node = max(range(13), key=lambda i: (depth[i], -i))  # a deepest node
        if int(torch.randint(0, 3, (1,), generator=gen)) == 0:
            node = int(torch.randint(0, 13, (1,), generator=gen))  # also short paths
        path = paths[node]
        padded = path + [0] * (N_CAP - len(path))  # junk past `accepted` is ignored
        adapter.commit(torch.tensor([padded]), torch.tensor([len(path) - 1]))
        seq += [tokens[j] for j in path]
        assert adapter.base_len.tolist() == [len(seq)]
        tree = _random_tree(13, gen, deep=True)
        out = _verify(adapter, [tree], [13])
        fresh = _adapter(model, rings)
        fresh.prefill(torch.tensor([seq]))
        exact = TargetAdapter(_fp64(family), max_length=S_MAX, feature_layers=[0])
        exact.prefill(torch.tensor([seq]))
        want = _verify(fresh, [tree], [13])
        want64 = _verify(exact, [tree], [13])
        Ref(want.logits[0, :13], want64.logits[0, :13]).check(
            out.logits[0, :13], what=f"after {len(seq)} committed rows"
        )
    assert len(seq) > WINDOW - 1 + N_CAP + 4  # the rings wrapped while committing
    # Anchor: the deepest node of the last tree against the plain model.
    tokens, depth, _, paths = tree
    node = max(range(13), key=lambda i: depth[i])
    _plain(family, seq + [tokens[j] for j in paths[node]])[0].check(out.logits[0, node])
