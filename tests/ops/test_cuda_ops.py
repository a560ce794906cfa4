"""CUDA paths of the ops against the CPU oracle (run on a GPU machine; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch
from tests.ops.kernel_cases import kv_commit_case, tree_walk_case

from difftree_rt import build_info, ops

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _needs_cuda_build() -> None:
    if not build_info()["cuda_compiled"]:
        pytest.skip("difftree_rt was built without CUDA kernels")


@pytest.mark.parametrize("seed", range(50))
def test_tree_walk_cuda_matches_cpu(seed: int) -> None:
    tree, choice, stops, remaining = tree_walk_case(seed)
    cpu = ops.tree_walk(tree, choice, stops, remaining)
    gpu = ops.tree_walk(
        tree.to("cuda"),
        choice.cuda(),
        None if stops is None else stops.cuda(),
        None if remaining is None else remaining.cuda(),
    )
    for c, g in zip(cpu, gpu):
        assert torch.equal(c, g.cpu())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("D", [64, 128, 7])
def test_kv_commit_cuda_matches_cpu(dtype: torch.dtype, D: int) -> None:
    caches, base, path, accepted = kv_commit_case(D, dtype, H=4, num_caches=6)
    gpu = [c.cuda() for c in caches]
    ops.kv_commit(caches, base, path, accepted)
    ops.kv_commit(gpu, base.cuda(), path.cuda(), accepted.cuda())
    for c, g in zip(caches, gpu):
        assert torch.equal(c, g.cpu())


def test_kv_commit_cuda_graph_replay() -> None:
    """Captured once, replayed with new device-side paths: the kernel reads them from memory."""
    B, H, S, D = 1, 2, 32, 64
    caches = [torch.randn(B, H, S, D, device="cuda") for _ in range(2)]
    base = torch.tensor([4], device="cuda")
    path = torch.tensor([[0, 1, 2, -1]], device="cuda")
    accepted = torch.tensor([2], device="cuda")
    graph = torch.cuda.CUDAGraph()
    ops.kv_commit(caches, base, path, accepted)  # warm-up outside capture
    with torch.cuda.graph(graph):
        ops.kv_commit(caches, base, path, accepted)
    for new_path, acc in (([0, 2, 3, -1], 2), ([0, 3, -1, -1], 1)):
        ref = [c.cpu() for c in caches]
        path.copy_(torch.tensor([new_path]))
        accepted.fill_(acc)
        graph.replay()
        ops.kv_commit(ref, torch.tensor([4]), torch.tensor([new_path]), torch.tensor([acc]))
        for c, r in zip(caches, ref):
            assert torch.equal(c.cpu(), r)
