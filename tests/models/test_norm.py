"""SyncBN across 2 gloo processes equals BN over the concatenated batch, forward and backward,
with unequal batch sizes and with one process holding zero samples."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fromscratch.models.norm import SyncBatchNorm, gn_groups_for, norm_factory

C = 4


def _data(n0: int, n1: int):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, C, 5, 6, generator=g) * 3 + 1 for n in (n0, n1)]
    ws = [torch.randn(n, C, 5, 6, generator=g) for n in (n0, n1)]
    return xs, ws


def _worker(rank: int, init: str, n0: int, n1: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    bn = SyncBatchNorm(C)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    xs, ws = _data(n0, n1)
    x = xs[rank].clone().requires_grad_(True)
    y = bn(x)
    (y * ws[rank]).sum().backward()
    grads = [bn.weight.grad.clone(), bn.bias.grad.clone()]
    for g in grads:
        dist.all_reduce(g)  # what DDP does (as a sum)
    torch.save({"y": y.detach(), "gx": x.grad, "gw": grads[0], "gb": grads[1], "rm": bn.running_mean,
                "rv": bn.running_var}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def _reference(n0: int, n1: int):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(C)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    xs, ws = _data(n0, n1)
    x = torch.cat(xs).requires_grad_(True)
    y = bn(x)
    (y * torch.cat(ws)).sum().backward()
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var


@pytest.mark.slow
@pytest.mark.parametrize("n0,n1", [(3, 5), (4, 0)])
def test_syncbn_equals_bn_over_concatenated_batch(tmp_path, n0, n1):
    init = f"file://{tmp_path}/store"
    mp.spawn(_worker, args=(init, n0, n1, str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"{k}.pt") for k in (0, 1)]
    y, gx, gw, gb, rm, rv = _reference(n0, n1)
    torch.testing.assert_close(torch.cat([r[0]["y"], r[1]["y"]]), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r[0]["gx"], r[1]["gx"]]), gx, atol=1e-5, rtol=1e-5)
    for k in (0, 1):
        torch.testing.assert_close(r[k]["gw"], gw, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(r[k]["gb"], gb, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(r[k]["rm"], rm, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r[k]["rv"], rv, atol=1e-5, rtol=1e-5)


def _empty_worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    bn = SyncBatchNorm(C)
    x = torch.zeros(0, C, 5, 6, requires_grad=True)
    y = bn(x)
    y.sum().backward()
    torch.save({"shape": tuple(y.shape), "rm": bn.running_mean, "rv": bn.running_var,
                "n": int(bn.num_batches_tracked), "gw": bn.weight.grad}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_syncbn_with_every_process_empty_keeps_its_statistics(tmp_path):
    """RoI heads with no RoI anywhere: an empty output, running statistics and their count untouched."""
    mp.spawn(_empty_worker, args=(f"file://{tmp_path}/store", str(tmp_path)), nprocs=2, join=True)
    for k in (0, 1):
        r = torch.load(tmp_path / f"{k}.pt")
        assert r["shape"] == (0, C, 5, 6) and r["n"] == 0
        torch.testing.assert_close(r["rm"], torch.zeros(C))
        torch.testing.assert_close(r["rv"], torch.ones(C))
        torch.testing.assert_close(r["gw"], torch.zeros(C))


def test_syncbn_single_process_is_bn_and_accepts_empty():
    torch.manual_seed(0)
    a, b = SyncBatchNorm(C), nn.BatchNorm2d(C)
    x = torch.randn(3, C, 4, 4)
    torch.testing.assert_close(a(x), b(x))
    assert a(torch.zeros(0, C, 4, 4)).shape == (0, C, 4, 4)


def test_norm_factory():
    assert isinstance(norm_factory("GN")(64), nn.GroupNorm) and norm_factory("GN")(64).num_groups == 32
    assert gn_groups_for(24, 32) == 24 and gn_groups_for(40, 32) == 20
    assert norm_factory("none") is None
    with pytest.raises(ValueError):
        norm_factory("LN")
