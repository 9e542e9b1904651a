"""The ZeroMQ transport: every collective, the wire checks, CurveZMQ, faults, and CrypTen on top.

Parties run in spawned processes (helpers.run_parties); each multi-party scenario spawns once
and reports many checks, so the file stays quick on two cores.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
import torch
import zmq
from torch.distributed import ReduceOp

from helpers import address, party_names, run_parties, values, zmq_options
from parties.transport import Transport, TransportError, TransportOptions, WireError, open_transport
from parties.transport import tensor_header
from parties.transport.base import reduce_tensors
from parties.transport.zmq_transport import MAGIC, PREFIX
from parties.transport.keys import (
    KeyFileError,
    fingerprint,
    generate_party_keys,
    load_key_pair,
    load_public_key,
)

SHAPE = (3, 4)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("keys")
    generate_party_keys(directory, party_names(3))
    return str(directory)


def _open(rank: int, world_size: int, options: TransportOptions) -> Transport:
    return open_transport(address(rank, world_size), options)


def _input(rank: int, dtype: torch.dtype, shape: tuple = SHAPE, salt: int = 0) -> torch.Tensor:
    """Party ``rank``'s deterministic input, so every party can compute the reference."""
    generator = torch.Generator().manual_seed(1000 * rank + salt)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator, dtype=dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min // 2, info.max // 2, shape, generator=generator, dtype=dtype)


# -- every collective against a locally computed reference ----------------------------------
def _collectives(rank: int, world_size: int, options: TransportOptions) -> dict[str, str]:
    """Runs each check in order; returns check name → "" (passed) or what went wrong."""
    t = _open(rank, world_size, options)
    everyone = range(world_size)
    after, before = (rank + 1) % world_size, (rank - 1) % world_size
    outcome: dict[str, str] = {}

    def check(name: str, got: object, expected: object) -> None:
        pairs = list(zip(got, expected)) if isinstance(expected, list) else [(got, expected)]
        same = all(torch.equal(g, e) and g.dtype == e.dtype for g, e in pairs) and (
            len(got) == len(expected) if isinstance(expected, list) else True
        )
        outcome[name] = "" if same else f"got {got}, expected {expected}"

    for dtype in (torch.int8, torch.int64, torch.float64, torch.bool):
        key = str(dtype).split(".")[1]
        mine, all_inputs = _input(rank, dtype), [_input(r, dtype) for r in everyone]
        t.send(mine, after)
        check(f"send_recv_{key}", t.recv(torch.empty_like(mine), before), all_inputs[before])
        check(f"all_gather_{key}", t.all_gather(mine), all_inputs)
        check(f"broadcast_{key}", t.broadcast(mine.clone(), 1), all_inputs[1])
        gathered = t.gather(mine, 0)
        if rank == 0:
            check(f"gather_{key}", gathered, all_inputs)
        else:
            outcome[f"gather_{key}"] = "" if gathered == [None] else f"non-destination got {gathered}"
        ops = [ReduceOp.BXOR] if dtype == torch.bool else [ReduceOp.SUM, ReduceOp.BXOR]
        for op in ops if not dtype.is_floating_point else [ReduceOp.SUM]:
            name = f"{key}_{'sum' if op == ReduceOp.SUM else 'xor'}"
            check(f"all_reduce_{name}", t.all_reduce(mine, op=op), reduce_tensors(all_inputs, op))
            reduced = t.reduce(mine, 1, op=op)
            if rank == 1:
                check(f"reduce_{name}", reduced, reduce_tensors(all_inputs, op))
            else:
                outcome[f"reduce_{name}"] = "" if reduced is None else f"non-destination got {reduced}"

    # lists travel as one message per peer
    shapes = [(2, 5), (7,), ()]
    lists = [[_input(r, torch.int64, shape, salt=i) for i, shape in enumerate(shapes)] for r in everyone]
    for op, name in ((ReduceOp.SUM, "sum"), (ReduceOp.BXOR, "xor")):
        expected = [reduce_tensors([lists[r][i] for r in everyone], op) for i in range(len(shapes))]
        check(f"all_reduce_batched_{name}", t.all_reduce(lists[rank], op=op, batched=True), expected)
        reduced = t.reduce(lists[rank], 0, op=op, batched=True)
        if rank == 0:
            check(f"reduce_batched_{name}", reduced, expected)
    targets = [tensor.clone() if rank == 2 % world_size else torch.zeros_like(tensor) for tensor in lists[rank]]
    t.broadcast(targets, 2 % world_size, batched=True)
    check("broadcast_batched_in_place", targets, lists[2 % world_size])

    pieces = [_input(r, torch.int64, salt=7) for r in everyone]
    check("scatter", t.scatter(pieces if rank == 0 else [], 0, size=SHAPE), pieces[rank])
    check("scatter_size_from_list", t.scatter(pieces, world_size - 1), pieces[rank])

    sending = t.isend(_input(rank, torch.int64, salt=3), after)
    received = torch.zeros(SHAPE, dtype=torch.int64)
    t.irecv(received, before).wait()
    sending.wait()
    check("isend_irecv", received, _input(before, torch.int64, salt=3))

    empty = torch.empty(0, 3, dtype=torch.int64)
    check("empty_all_reduce", t.all_reduce(empty), empty)
    check("empty_all_gather", t.all_gather(empty), [empty] * world_size)
    t.send(torch.empty(0), after)
    check("empty_send_recv", t.recv(torch.empty(0), before), torch.empty(0))
    check("zero_dim_all_reduce", t.all_reduce(torch.tensor(rank)), torch.tensor(sum(everyone)))
    strided = torch.arange(12).reshape(3, 4).t()
    check("non_contiguous", t.all_gather(strided), [strided] * world_size)

    # large payloads travel zero-copy and are adopted by the receiver when aligned
    big = [_input(r, torch.int64, (100_000,), salt=11) for r in everyone]
    check("large_all_reduce", t.all_reduce(big[rank]), reduce_tensors(big, ReduceOp.SUM))
    mixed = [[_input(r, torch.int8, (3,), salt=12), big[r]] for r in everyone]  # big starts at byte 3
    expected = [reduce_tensors([mixed[r][i] for r in everyone], ReduceOp.SUM) for i in range(2)]
    check("large_batched_unaligned", t.all_reduce(mixed[rank], batched=True), expected)
    target = big[0].clone() if rank == 0 else torch.zeros_like(big[0])
    t.broadcast(target, 0)
    check("large_broadcast_in_place", target, big[0])

    def message(r: int) -> dict:
        return {"rank": r, "values": [1.5, None, "x"], "blob": bytes([r, 255])}

    def check_object(name: str, got: object, expected: object) -> None:
        outcome[name] = "" if got == expected else f"got {got!r}, expected {expected!r}"

    t.send_obj(message(rank), after)
    check_object("send_recv_obj", t.recv_obj(before), message(before))
    check_object("broadcast_obj", t.broadcast_obj(message(rank) if rank == 0 else None, 0), message(0))
    gathered_objects = t.gather_obj(message(rank), 0)
    check_object("gather_obj", gathered_objects, [message(r) for r in everyone] if rank == 0 else None)

    # many small messages in flight, waited for out of order
    count = 1500
    sends = [t.isend(torch.tensor([rank, i]), after) for i in range(count)]
    inbox = [torch.zeros(2, dtype=torch.int64) for _ in range(count)]
    requests = [t.irecv(tensor, before) for tensor in inbox]
    for request in reversed(requests):
        request.wait()
    for handle in sends:
        handle.wait()
    check("many_small_in_flight", torch.stack(inbox), torch.tensor([[before, i] for i in range(count)]))

    t.reset_communication_stats()
    t.all_reduce(torch.zeros(1000, dtype=torch.int64))
    t.barrier()
    stats = t.stats
    payload = 8000 * (world_size - 1)
    outcome["stats"] = "" if (
        stats.rounds == 2 and payload < stats.bytes_sent < payload + 1000
        and payload < stats.bytes_received < payload + 1000 and stats.seconds > 0
    ) else f"unexpected stats {stats}"
    t.close()
    t.close()  # idempotent
    return outcome


@pytest.fixture(scope="module", params=[2, 3], ids=["2_parties", "3_parties"])
def collective_outcomes(request: pytest.FixtureRequest, key_dir: str) -> list[dict[str, str]]:
    world_size = request.param
    results = run_parties(_collectives, world_size, world_size, zmq_options(world_size, key_dir), timeout_s=150)
    return values(results, world_size)


def test_every_collective_matches_reference(collective_outcomes: list[dict[str, str]]) -> None:
    failures = {(rank, name): error for rank, outcome in enumerate(collective_outcomes)
                for name, error in outcome.items() if error}
    assert not failures
    assert len(set().union(*collective_outcomes)) > 40  # every check ran somewhere


# -- two-party integer sums, added as the chunks arrive ------------------------------------------
def _sums_as_chunks_arrive(rank: int, options: TransportOptions, grouped: bool) -> dict[str, bool]:
    """A two-party int64 all-reduce whose sum wraps, with the peer's message taken in before it
    is asked for (whole, or its first chunks) or after (every chunk summed as it comes); plain
    and through a party group (the dealer's world: parties 0 and 1 of three)."""
    from parties.transport.group import PartyGroup
    from parties.transport.zmq_transport import CHUNK_BYTES

    transport = _open(rank, 3 if grouped else 2, options)
    outcome: dict[str, bool] = {}
    if rank < 2:
        comm = PartyGroup(transport, 2) if grouped else transport
        values = [_input(r, torch.int64, (300_000,), salt=21) * 3 for r in range(2)]  # wraps: beyond 2^63
        batched = [[_input(r, torch.int64, (5, 7000), salt=22), _input(r, torch.int64, (9000,), salt=23)]
                   for r in range(2)]
        for case in ("after", "whole", "partial"):
            if rank == 0 and case != "after":
                # pump one message at a time until party 1's is in whole, or its first chunks
                while (transport._recv_seq[1] not in transport._stash[1] if case == "whole" else
                       transport._partial[1] is None or transport._partial[1].filled < 3 * CHUNK_BYTES):
                    transport._pump(1.0, "the test")
            elif rank == 1 and case == "after":
                time.sleep(0.5)  # party 0 asks first
            outcome[case] = torch.equal(comm.all_reduce(values[rank]), values[0] + values[1])
            got = comm.all_reduce(batched[rank], batched=True)
            outcome[f"{case}_batched"] = all(torch.equal(g, a + b) for g, a, b in zip(got, *batched))
        outcome["nothing_left"] = not transport._summed and not transport._sums
    transport.close()
    return outcome


@pytest.mark.parametrize("grouped", [False, True], ids=["two_parties", "party_group"])
def test_two_party_sums_added_as_chunks_arrive(key_dir: str, grouped: bool) -> None:
    world_size = 3 if grouped else 2
    results = values(run_parties(_sums_as_chunks_arrive, world_size, zmq_options(world_size, key_dir), grouped,
                                 timeout_s=120), world_size)
    for outcome in results[:2]:
        assert outcome == dict.fromkeys(["after", "after_batched", "whole", "whole_batched", "partial",
                                         "partial_batched", "nothing_left"], True)


# -- a party group's all-reduce: one message per peer, as the per-tensor path --------------------
class _PointToPointOnly:
    """A transport seen without its message-level reduction: the party group then builds its
    all-reduce from one isend/irecv per tensor (the path the message-level one replaced)."""

    all_reduce_among = None

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


def _group_reductions(rank: int, world_size: int, options: TransportOptions) -> dict[str, bool]:
    """Parties 0..world_size-2 of a dealer's world reduce the same inputs through the party
    group's message path and its per-tensor path; every result must be the same bits."""
    from parties.transport.group import PartyGroup

    transport = _open(rank, world_size, options)
    parties = world_size - 1
    outcome: dict[str, bool] = {}
    if rank < parties:
        fast, generic = PartyGroup(transport, parties), PartyGroup(_PointToPointOnly(transport), parties)
        cases = {
            "int64_batched": ([_input(rank, torch.int64, (4, 3), salt=31), _input(rank, torch.int64, (), salt=32),
                               _input(rank, torch.int64, (7,), salt=33)], ReduceOp.SUM),
            "int64_large": ([_input(rank, torch.int64, (9000,), salt=34), _input(rank, torch.int64, (5,), salt=35)],
                            ReduceOp.SUM),
            "float32": ([_input(rank, torch.float32, (6,), salt=36), _input(rank, torch.float32, (2, 2), salt=37)],
                        ReduceOp.SUM),
            "bxor": ([_input(rank, torch.int64, (5,), salt=38), _input(rank, torch.int64, (3,), salt=39)],
                     ReduceOp.BXOR),
        }
        peers = [r for r in range(parties) if r != rank]
        for name, (tensors, op) in cases.items():
            sent, rounds = [transport._send_seq[r] for r in peers], transport.stats.rounds
            got = fast.all_reduce(tensors, op=op, batched=True)
            one_round = transport.stats.rounds == rounds + 1
            one_message = [transport._send_seq[r] for r in peers] == [n + 1 for n in sent]
            expected = generic.all_reduce(tensors, op=op, batched=True)
            outcome[name] = one_round and one_message and all(torch.equal(g, e) for g, e in zip(got, expected))
        single = _input(rank, torch.int64, SHAPE, salt=40)
        outcome["single"] = torch.equal(fast.all_reduce(single), generic.all_reduce(single))
    transport.close()
    return outcome


@pytest.mark.parametrize("parties", [2, 3])
def test_party_group_all_reduce_matches_per_tensor_path(parties: int) -> None:
    world_size = parties + 1
    results = values(run_parties(_group_reductions, world_size, world_size, zmq_options(world_size),
                                 timeout_s=120), world_size)
    for outcome in results[:parties]:
        assert outcome == dict.fromkeys(["int64_batched", "int64_large", "float32", "bxor", "single"], True)


# -- a large tensor ---------------------------------------------------------------------------
def _large(rank: int, options: TransportOptions) -> tuple[bool, float, int]:
    t = _open(rank, 2, options)
    elements = (256 << 20) // 8
    start = time.perf_counter()
    if rank == 0:
        t.send(torch.arange(elements, dtype=torch.int64), 1)
        t.barrier()
        ok = True
    else:
        received = t.recv(torch.empty(elements, dtype=torch.int64), 0)
        ok = all(received[i].item() == i for i in (0, elements // 2, elements - 1))
        del received
        t.barrier()
    seconds = time.perf_counter() - start
    moved = t.stats.bytes_sent + t.stats.bytes_received
    t.close()
    return ok, seconds, moved


@pytest.mark.large
def test_256_mib_tensor(key_dir: str) -> None:
    """One 256 MiB message, encrypted: about 0.8 GiB of memory at the peak (sender, zmq, result)."""
    results = values(run_parties(_large, 2, zmq_options(2, key_dir)), 2)
    assert all(ok for ok, _, _ in results)
    assert all(moved >= 256 << 20 for _, _, moved in results)


# -- malformed and tampered frames --------------------------------------------------------------
def _header(seq: int, op: str = "p2p", sender: int = 1, dtype: torch.dtype = torch.int64,
            shape: tuple[int, ...] = (4,)) -> bytes:
    return tensor_header.encode(op, seq, sender, [torch.empty(shape, dtype=dtype)])


def _frame(header: bytes, payload: bytes, size: int | None = None, magic: int = MAGIC,
           header_bytes: int | None = None) -> bytes:
    """One message frame as the transport sends it, with any field of its prefix overridden."""
    size = len(payload) if size is None else size
    return PREFIX.pack(magic, len(header) if header_bytes is None else header_bytes, size) + header + payload


def _tamper_cases(seq: int) -> dict[str, list[bytes]]:
    good = bytes(32)
    header = _header(seq)
    return {
        "wrong_dtype": [_frame(_header(seq, dtype=torch.float64), good)],
        "wrong_shape": [_frame(_header(seq, shape=(5,)), bytes(40))],
        "wrong_size": [_frame(header, bytes(31))],
        "size_unlike_payload": [_frame(header, good, size=31)],
        "announced_small_size": [_frame(header, b"", size=32)],
        "wrong_seq": [_frame(_header(seq + 5), good)],
        "wrong_op": [_frame(_header(seq, op="broadcast"), good)],
        "wrong_sender": [_frame(_header(seq, sender=0), good)],
        "garbage_header": [b"\xc1\x00garbage"],
        "msgpack_header": [msgpack.packb({"op": "p2p", "seq": seq, "sender": 1, "dtype": ["int64"],
                                          "shape": [[4]], "data": good})],
        "wrong_magic": [_frame(header, good, magic=MAGIC ^ 1)],
        "header_past_frame": [_frame(header, good, header_bytes=len(header) + 40)],
        "header_cut_short": [_frame(header[:-3], good)],
        "unknown_dtype_code": [_frame(header[:-10] + bytes([200]) + header[-9:], good)],
        "unknown_op_code": [_frame(bytes([200]) + header[1:], good)],
        "extra_frame": [_frame(header, good), good],
    }


def _tamper(rank: int, cases: list[str], options: list[TransportOptions]) -> dict[str, tuple[str, str]]:
    """Rank 1 sends one doctored message per case; rank 0 reports what its recv raised."""
    seen = {}
    for case, case_options in zip(cases, options):
        t = _open(rank, 2, case_options)
        if rank == 1:
            t._dealers[0].send_multipart(_tamper_cases(t._send_seq[0])[case])
            t.recv(torch.empty(1), 0)  # wait until the victim has judged this case
        else:
            try:
                t.recv(torch.empty(4, dtype=torch.int64), 1)
                seen[case] = ("accepted", "")
            except Exception as error:
                seen[case] = (type(error).__name__, str(error))
            t.send(torch.empty(1), 1)
        t.close()
    return seen


def test_tampered_frames_rejected_naming_peer(key_dir: str) -> None:
    cases = list(_tamper_cases(0))
    options = [zmq_options(2, key_dir, timeout_s=10.0) for _ in cases]
    seen = values(run_parties(_tamper, 2, cases, options), 2)[0]
    for case in cases:
        kind, message = seen[case]
        assert kind == "WireError" and "party 1 (p1)" in message, (case, kind, message)


def test_oversized_batch_refused_before_sending() -> None:
    options = zmq_options(1, max_message_bytes=1024)
    t = _open(0, 1, options)
    try:
        with pytest.raises(WireError, match="max_message_bytes"):
            t._send_tensors("p2p", 0, [torch.zeros(200, dtype=torch.int64)])
    finally:
        t.close()


# -- CurveZMQ keys -----------------------------------------------------------------------------
def test_key_files(tmp_path: Path) -> None:
    public_keys = generate_party_keys(tmp_path, ["a", "b"])
    assert (tmp_path / "a.secret").stat().st_mode & 0o777 == 0o600
    public, secret = load_key_pair(tmp_path, "a")
    assert public == public_keys["a"] == load_public_key(tmp_path, "a")
    assert len(fingerprint(public)) == 16 and fingerprint(public) != fingerprint(public_keys["b"])
    with pytest.raises(FileExistsError):
        generate_party_keys(tmp_path, ["a"])
    os.chmod(tmp_path / "b.secret", 0o644)
    with pytest.raises(KeyFileError, match="readable by other users"):
        load_key_pair(tmp_path, "b")


def test_encryption_needs_keys() -> None:
    with pytest.raises(TransportError, match="key_dir"):
        _open(0, 2, zmq_options(2, encrypt=True))


def _expect_failure(rank: int, options: list[TransportOptions]) -> tuple[str, str, float]:
    start = time.perf_counter()
    try:
        _open(rank, 2, options[rank]).close()
        return "connected", "", time.perf_counter() - start
    except Exception as error:
        return type(error).__name__, str(error), time.perf_counter() - start


def test_unknown_key_refused(key_dir: str, tmp_path: Path) -> None:
    """Party 1 presents a key party 0 never listed (knowing party 0's public key): refused."""
    generate_party_keys(tmp_path, ["p1"])
    options = zmq_options(2, key_dir, connect_timeout_s=4.0)
    impostor = replace(options, key_dir=str(tmp_path), public_keys={"p0": load_public_key(key_dir, "p0")})
    results = values(run_parties(_expect_failure, 2, [options, impostor]), 2)
    for rank, (kind, message, seconds) in enumerate(results):
        assert kind == "TransportError", results
        assert f"party {1 - rank} (p{1 - rank})" in message and seconds < 6, results
    # who notices first races: a ZAP refusal, a failed handshake, or a peer that went away
    assert any("CurveZMQ" in message for _, message, _ in results), results


def test_refusals_logged_by_fingerprint(caplog: pytest.LogCaptureFixture) -> None:
    from parties.transport.zmq_transport import PartyAuthenticator

    known, _ = zmq.curve_keypair()
    stranger, secret = zmq.curve_keypair()
    context = zmq.Context()
    try:
        authenticator = PartyAuthenticator(context, {known: 1})
        with caplog.at_level(logging.WARNING):
            assert authenticator.callback("*", known) and not authenticator.callback("*", stranger)
    finally:
        context.term()
    assert fingerprint(stranger) in caplog.text
    assert stranger.decode() not in caplog.text and secret.decode() not in caplog.text


# -- faults ------------------------------------------------------------------------------------
def _dies(rank: int, options: TransportOptions) -> tuple[str, str, float]:
    t = _open(rank, 2, options)
    t.barrier()
    if rank == 1:  # let its last barrier message leave first, while party 0 is inside all_reduce
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    start = time.perf_counter()
    try:
        t.all_reduce(torch.ones(4))
        outcome = ("completed", "")
    except TransportError as error:
        outcome = ("TransportError", str(error))
    seconds = time.perf_counter() - start
    t.close()
    return (*outcome, seconds)


def test_killed_peer_raises_within_timeout(key_dir: str) -> None:
    results = run_parties(_dies, 2, zmq_options(2, key_dir, timeout_s=2.0), timeout_s=30)
    ok, (kind, message, seconds) = results[0]
    assert ok and kind == "TransportError", results
    assert "party 1 (p1)" in message and "all_reduce" in message
    assert seconds < 4


def test_peer_that_never_starts(caplog: pytest.LogCaptureFixture) -> None:
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING), pytest.raises(TransportError, match=r"party 1 \(p1\)"):
        _open(0, 2, zmq_options(2, encrypt=False, connect_timeout_s=2.0))
    assert time.perf_counter() - start < 4
    assert "NEITHER ENCRYPTED NOR AUTHENTICATED" in caplog.text


# -- CUDA tensors are staged through host memory ---------------------------------------------------
def _cuda(rank: int, options: TransportOptions) -> bool:
    t = _open(rank, 2, options)
    mine = torch.full((5,), float(rank + 1), device="cuda")
    total = t.all_reduce(mine)
    t.send(mine, 1 - rank)
    other = t.recv(torch.empty(5, device="cuda"), 1 - rank)
    t.close()
    on_device = total.device.type == other.device.type == "cuda"
    return on_device and bool(total.eq(3).all()) and bool(other.eq(2 - rank).all())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors(key_dir: str) -> None:
    assert all(values(run_parties(_cuda, 2, zmq_options(2, key_dir)), 2))


# -- CrypTen end to end ------------------------------------------------------------------------
def _mpc_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """x from party 0, y from party 1: 20 float32 values each in [-9, 9]."""
    return tuple(_input(rank, torch.float32, (20,)).mul(4).clamp(-9, 9) for rank in (0, 1))


def _crypten(rank: int, options: TransportOptions) -> dict[str, list[float]]:
    from mpc.session import MpcSession
    from protocols import ProtocolConfig, ProtocolSuite

    t = _open(rank, 3, options)
    x, y = _mpc_inputs()
    with MpcSession(t, ProtocolSuite(ProtocolConfig(name="tfp", triple_source="tfp"))) as crypten:
        secret_x, secret_y = crypten.cryptensor(x, src=0), crypten.cryptensor(y, src=1)
        result = {
            "mul": (secret_x * secret_y).get_plain_text(),
            "relu": secret_x.relu().get_plain_text(),
            "sigmoid": secret_y.sigmoid().get_plain_text(),
        }
    t.close()
    return {name: value.double().tolist() for name, value in result.items()}


def test_crypten_over_zmq_matches_plaintext(key_dir: str) -> None:
    """MPCTensor ops over encrypted zmq, 3 parties, 16 fractional bits (LSB 2^-16).

    mul of |x|, |y| < 10: encoding rounds each input by at most 2^-17, so the product is off by
    at most (|x| + |y|) 2^-17 < 10 * 2^-16, plus one LSB from truncation: tolerance 16 * 2^-16.
    relu is exact up to encoding: 2^-16. sigmoid is dominated by CrypTen's own approximation
    (exp by repeated squaring, Newton reciprocal), measured at ~2e-3 here: tolerance 1e-2.
    """
    outcomes = values(run_parties(_crypten, 3, zmq_options(3, key_dir), timeout_s=90), 3)
    x, y = _mpc_inputs()
    x, y = x.double(), y.double()
    lsb = 2.0 ** -16
    for outcome in outcomes:
        got = {name: torch.tensor(value, dtype=torch.float64) for name, value in outcome.items()}
        assert torch.allclose(got["mul"], x * y, rtol=0, atol=16 * lsb)
        assert torch.allclose(got["relu"], x.relu(), rtol=0, atol=lsb)
        assert torch.allclose(got["sigmoid"], y.sigmoid(), rtol=0, atol=1e-2)
    assert outcomes[0] == outcomes[1] == outcomes[2]
