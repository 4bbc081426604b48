"""ncl_ext.distributed and the losses' cross-rank gathering, checked with two real gloo processes."""

import pytest
import torch
import torch.multiprocessing as mp

from ncl_ext import distributed
from tests._distributed_worker import (
    CASES,
    FLOAT32_CASES,
    WORLD_SIZE,
    train_step,
    worker,
)


def test_single_process_helpers_are_no_ops():
    assert not distributed.is_distributed()
    assert distributed.get_rank() == 0
    assert distributed.get_world_size() == 1
    z = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_with_grad(z) is z
    gathered = distributed.gather(z)
    assert not gathered.requires_grad and torch.equal(gathered, z)


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    """Spawn WORLD_SIZE gloo processes once; each saves its results to a file."""
    directory = tmp_path_factory.mktemp("gloo")
    mp.spawn(worker, args=(str(directory / "init"), str(directory)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(directory / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.mark.distributed
def test_rank_and_world_size(rank_results):
    assert [r["rank"] for r in rank_results] == list(range(WORLD_SIZE))
    assert all(r["world_size"] == WORLD_SIZE for r in rank_results)


@pytest.mark.distributed
def test_gather_with_grad_orders_by_rank_and_sums_gradients(rank_results):
    expected_rows = torch.tensor([1.0, 1.0, 2.0, 2.0], dtype=torch.float64)
    for rank, result in enumerate(rank_results):
        gathered, grad, deprecations = result["gather"]
        assert deprecations == []  # the functional collectives, not the deprecated torch.distributed.nn.all_gather
        torch.testing.assert_close(gathered[:, 0], expected_rows)
        # row k of the gathered tensor has weight k on each of the 2 ranks: the slice gets 2 * k
        rows = torch.arange(2 * rank, 2 * rank + 2, dtype=torch.float64)
        torch.testing.assert_close(grad, (WORLD_SIZE * rows)[:, None].expand(2, 3))


@pytest.mark.distributed
@pytest.mark.parametrize("case", CASES)
def test_rank_averaged_gradients_equal_full_batch_gradients(rank_results, case):
    full_loss, full_grads = train_step(case, slice(None))
    rank_losses = [result["train_step"][case][0] for result in rank_results]
    # each rank's loss averages over its local anchors, so the full-batch loss is their mean
    assert sum(rank_losses) / WORLD_SIZE == pytest.approx(full_loss, rel=1e-6 if case in FLOAT32_CASES else 1e-10)
    for result in rank_results:
        _, grads = result["train_step"][case]
        assert grads.keys() == full_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, full_grads[name], rtol=1e-6, atol=1e-6, msg=f"{case}: {name}")


@pytest.mark.distributed
def test_clip_and_siglip_losses_match_open_clip_on_every_rank(rank_results):
    for result in rank_results:
        comparison = result["open_clip"]
        cases = {key.split("-", 1)[1] for key in comparison}
        assert len(cases) == 5  # SigLIP and ClipLoss with the 4 gathering options
        for case in cases:
            for ours, theirs in zip(comparison[f"ours-{case}"], comparison[f"open_clip-{case}"], strict=True):
                torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12, msg=case)
