"""OT-based preprocessing: base OTs, exact Gilboa products, masked views, a real session."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest
import torch

from protocols import ProtocolConfig
from protocols.ot import GilboaEngine, OtChannel, _matmul_u64, base_ot_receive, base_ot_send
from protocol_sessions import party_values, run_parties


class _Handle:
    def __init__(self, action=None):
        self.action = action

    def wait(self):
        if self.action:
            self.action()


class PipeComm:
    """Two parties in two threads of this process, joined by queues (counts bytes sent)."""

    def __init__(self, rank, queues):
        self.rank, self.queues, self.sent = rank, queues, 0

    def get_rank(self):
        return self.rank

    def get_world_size(self):
        return 2

    def send_obj(self, obj, peer):
        self.queues[(self.rank, peer)].put(obj)

    def recv_obj(self, peer):
        return self.queues[(peer, self.rank)].get(timeout=60)

    def isend(self, tensor, peer):
        self.sent += tensor.numel() * tensor.element_size()
        self.queues[(self.rank, peer)].put(tensor.clone())
        return _Handle()

    def irecv(self, tensor, peer):
        return _Handle(lambda: tensor.copy_(self.queues[(peer, self.rank)].get(timeout=60)))


def run_pair(fn):
    """``fn(rank, comm)`` for both ranks at once; returns their results."""
    queues = {(0, 1): queue.Queue(), (1, 0): queue.Queue()}
    results, errors = {}, []

    def party(rank):
        try:
            results[rank] = fn(rank, PipeComm(rank, queues))
        except BaseException as error:  # surface in the test thread
            errors.append(error)

    threads = [threading.Thread(target=party, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if errors:
        raise errors[0]
    return results[0], results[1]


def _words(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**64 - 1, size=shape, dtype=np.uint64, endpoint=True)


def test_base_ots_deliver_exactly_the_chosen_key():
    choices = [0, 1] * 16

    def party(rank, comm):
        return base_ot_send(comm, 1, 32) if rank == 0 else base_ot_receive(comm, 0, choices)

    pairs, chosen = run_pair(party)
    assert all(key == pair[c] and key != pair[1 - c] for key, pair, c in zip(chosen, pairs, choices))
    assert len({k for pair in pairs for k in pair}) == 64


def test_gilboa_products_are_exact():
    a, b = [_words((6, 5), s) for s in (1, 2)], [_words((5, 3), s) for s in (3, 4)]
    x, y = [_words(500, s) for s in (5, 6)], [_words(500, s) for s in (7, 8)]

    def party(rank, comm):
        engine = GilboaEngine(OtChannel(comm, 1 - rank))
        return {"matmul": engine.cross_matmul(a[rank], b[rank]),
                "elementwise": engine.cross_elementwise(x[rank], y[rank]),
                "one_way": engine.one_way_elementwise(x[rank], y[rank]),
                "and": engine.cross_and(x[rank], y[rank]),
                "bits": engine.cross_bits_times_words((x[rank] & np.uint64(1)).astype(np.uint8), y[rank])}

    p0, p1 = run_pair(party)
    assert np.array_equal(p0["matmul"] + p1["matmul"], _matmul_u64(a[0], b[1]) + _matmul_u64(a[1], b[0]))
    assert np.array_equal(p0["elementwise"] + p1["elementwise"], x[0] * y[1] + x[1] * y[0])
    assert np.array_equal(p0["one_way"] + p1["one_way"], x[0] * y[1])
    assert np.array_equal(p0["and"] ^ p1["and"], (x[0] & y[1]) ^ (x[1] & y[0]))
    bit = [v & np.uint64(1) for v in x]
    assert np.array_equal(p0["bits"] + p1["bits"], bit[0] * y[1] + bit[1] * y[0])


@pytest.mark.parametrize("fill", [0, 2**64 - 1])
def test_each_side_sees_only_uniformly_masked_messages(fill):
    """Even for constant inputs (all-zero or all-one bits), every received view is uniform."""
    count = 4000
    value = np.full(count, fill, dtype=np.uint64)

    def party(rank, comm):
        channel = OtChannel(comm, 1 - rank, record=True)
        GilboaEngine(channel).cross_elementwise(value, value)
        return [view for _, view in channel.views]

    for views in run_pair(party):
        u_matrix, tau = views  # the peer's IKNP u columns, then its tau corrections
        for view in (u_matrix, tau):
            bits = np.unpackbits(np.ascontiguousarray(view).view(np.uint8))
            assert abs(bits.mean() - 0.5) < 0.01, f"a view is biased: {bits.mean():.4f}"
        # and no OT's u column bit pattern repeats the choice pattern (all choices equal here)
        assert len(np.unique(u_matrix[:, :64], axis=0)) == u_matrix.shape[0]


def test_throughput_and_bytes_per_triple(capsys):
    count = 20_000
    x, y = [_words(count, s) for s in (1, 2)], [_words(count, s) for s in (3, 4)]

    def party(rank, comm):
        engine = GilboaEngine(OtChannel(comm, 1 - rank))
        sent_before, start = comm.sent, time.perf_counter()
        engine.cross_elementwise(x[rank], y[rank])  # both cross terms of `count` triples
        return time.perf_counter() - start, comm.sent - sent_before

    (t0, b0), (t1, b1) = run_pair(party)
    seconds = max(t0, t1)
    per_triple = (b0 + b1) / count
    print(f"\nOT triples: {count / seconds:,.0f} triples/s (two parties in one process), "
          f"{per_triple:,.0f} bytes/triple (both parties together)")
    assert per_triple < 3200


def _compute(crypten, rank):
    torch.manual_seed(2)
    a, b = torch.randn(16, 4), torch.randn(4, 2)
    x, w = crypten.cryptensor(a), crypten.cryptensor(b)
    return {
        "provider": crypten.mpc.get_default_provider().NAME,
        "matmul": ((x @ w).get_plain_text() - a @ b).abs().max().item(),
        "square": (x.square().get_plain_text() - a * a).abs().max().item(),
        "sigmoid": ((x @ w).sigmoid().get_plain_text() - (a @ b).sigmoid()).abs().max().item(),
        "relu": (x.relu().get_plain_text() - a.relu()).abs().max().item(),
        "div": (x.div(5).get_plain_text() - a / 5).abs().max().item(),
    }


@pytest.mark.slow
def test_session_over_ot():
    results = party_values(run_parties(_compute, ProtocolConfig(name="ot", triple_source="ot"), parties=2,
                                       timeout_s=240), 2)
    for result in results:
        assert result["provider"] == "COTRAIN_OT"
        assert max(result[k] for k in ("matmul", "square", "relu", "div")) < 1e-3
        assert result["sigmoid"] < 1e-2


def test_ot_says_it_is_two_party():
    from protocols.suite import check_party_count

    check_party_count(ProtocolConfig(triple_source="ot"), 2)
    with pytest.raises(ValueError, match="2-party protocol"):
        check_party_count(ProtocolConfig(triple_source="ot"), 3)
