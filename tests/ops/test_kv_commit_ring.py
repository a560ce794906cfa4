"""kv_commit over ring caches (a sliding-window layer's K/V, DESIGN.md §7): row r lives in slot
r % S. The CPU op against both references, wrap-around, validation, the C ABI entry."""

from __future__ import annotations

import pytest
import torch

from difftree_rt import ops
from difftree_rt.reference.kv_commit import kv_commit as kv_commit_loop
from difftree_rt.reference.kv_commit import kv_commit_reference


def ring_case(seed: int, S: int, B: int, P: int, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    """(caches, base_len, path, accepted): random strictly increasing paths with entries < S and
    base lengths far past S, so that most requests wrap around the ring."""
    gen = torch.Generator().manual_seed(seed)
    paths, accs = [], []
    for _ in range(B):
        acc = int(torch.randint(0, min(P, S), (), generator=gen))
        nodes = sorted(torch.randperm(S - 1, generator=gen)[:acc].add(1).tolist())
        paths.append([0, *nodes] + [-1] * (P - 1 - acc))
        accs.append(acc)
    base = torch.randint(0, 50 * S, (B,), generator=gen)
    H, D = 1 + seed % 3, [4, 8, 64][seed % 3]
    caches = [torch.randn((B, H, S, D), generator=gen).to(dtype) for _ in range(3)]
    return caches, base, torch.tensor(paths), torch.tensor(accs)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ring_commit_matches_references(seed: int, dtype: torch.dtype) -> None:
    S = [5, 8, 16, 33][seed % 4]
    caches, base, path, accepted = ring_case(seed, S, B=1 + seed % 3, P=1 + seed % 9, dtype=dtype)
    loop = [c.clone() for c in caches]
    vec = [c.clone() for c in caches]
    kv_commit_loop(loop, base, path, accepted, ring=True)
    kv_commit_reference(vec, base, path, accepted, ring=True)
    ops.kv_commit(caches, base.to(torch.int32) if seed % 2 else base, path, accepted, ring=True)
    for c, e, v in zip(caches, loop, vec, strict=True):
        assert torch.equal(e, v)
        assert torch.equal(c, e)


def test_ring_commit_wraps_around() -> None:
    """base 6 in a ring of 8: path nodes 2, 3 (rows 8, 9 = slots 0, 1) move to rows 7, 8 (slots
    7, 0); slot 0 is both a source and a destination."""
    S = 8
    cache = torch.arange(S, dtype=torch.float32).view(1, 1, S, 1).repeat(1, 1, 1, 2)
    before = cache.clone()
    ops.kv_commit(
        [cache], torch.tensor([6]), torch.tensor([[0, 2, 3]]), torch.tensor([2]), ring=True
    )
    assert cache[0, 0, 7, 0].item() == before[0, 0, 0, 0].item()  # row 8 -> row 7
    assert cache[0, 0, 0, 0].item() == before[0, 0, 1, 0].item()  # row 9 -> row 8
    untouched = [s for s in range(S) if s not in (0, 7)]
    assert torch.equal(cache[0, 0, untouched], before[0, 0, untouched])


def test_ring_commit_accepts_any_base_and_checks_the_path() -> None:
    caches = [torch.randn(2, 2, 6, 4) for _ in range(2)]
    before = [c.clone() for c in caches]
    base = torch.tensor([10**12, 3])
    # A full cache of 6 rows rejects base 10**12; a ring does not, but its path must be < S.
    with pytest.raises(ValueError, match="outside the caches"):
        ops.kv_commit(caches, base, torch.tensor([[0, 1], [0, 1]]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"path\[1, 1\] = 6 does not fit in the ring of S = 6"):
        ops.kv_commit(caches, base, torch.tensor([[0, 1], [0, 6]]), torch.tensor([1, 1]), ring=True)
    with pytest.raises(ValueError, match="base_len: expected values >= 0"):
        ops.kv_commit(
            caches,
            torch.tensor([-1, 0]),
            torch.tensor([[0, 1], [0, 1]]),
            torch.tensor([1, 1]),
            ring=True,
        )
    for c, c0 in zip(caches, before, strict=True):
        assert torch.equal(c, c0)
    ops.kv_commit(caches, base, torch.tensor([[0, 5], [0, 5]]), torch.tensor([1, 1]), ring=True)
    # request 0: row base + 5 -> base + 1, base = 10**12 = 4 (mod 6): slot 3 -> slot 5
    assert torch.equal(caches[0][0, :, 5], before[0][0, :, 3])
    # request 1: base 3, row 8 -> row 4: slot 2 -> slot 4
    assert torch.equal(caches[1][1, :, 4], before[1][1, :, 2])


def test_ring_commit_opcheck() -> None:
    caches = [torch.randn(2, 2, 8, 8) for _ in range(3)]
    args = (
        caches,
        torch.tensor([13, 4]),
        torch.tensor([[0, 2, 7], [0, 1, -1]]),
        torch.tensor([2, 1]),
        True,
    )
    torch.library.opcheck(torch.ops.difftree.kv_commit, args)
