"""What CrypTen's communicator promises, on the zmq and gloo transports and a party group:
objects carrying tensors, reduce and gather at non-destinations, broadcast into parameters.

(The MPI transport's twin checks run under mpirun in tests/launch/mpi_collectives.py.)
"""

from __future__ import annotations

import msgpack
import pytest
import torch

from helpers import address, free_ports, run_parties, values, zmq_options
from parties.transport import TransportOptions, WireError, open_transport
from parties.transport.group import PartyGroup
from parties.transport.wire import TENSOR_EXT, tensor_ext, pack_object, unpack_object


def _object(rank: int) -> dict:
    """Party ``rank``'s nested object: tensors of several dtypes and shapes inside containers."""
    generator = torch.Generator().manual_seed(rank)
    return {"rank": rank, "weights": [torch.randn(3, 2, generator=generator, dtype=torch.float64),
                                      (torch.tensor(rank), torch.zeros(0, 4, dtype=torch.bool))],
            "mask": torch.randint(-2**62, 2**62, (5,), generator=generator),
            "half": torch.ones(2, dtype=torch.bfloat16) * rank}


def _same(got: object, expected: object) -> bool:
    if torch.is_tensor(expected):
        return torch.is_tensor(got) and got.dtype == expected.dtype and torch.equal(got, expected)
    if isinstance(expected, (list, tuple)):
        return isinstance(got, (list, tuple)) and len(got) == len(expected) and all(map(_same, got, expected))
    if isinstance(expected, dict):
        return isinstance(got, dict) and got.keys() == expected.keys() and all(
            _same(got[key], expected[key]) for key in expected)
    return got == expected


def _surface(rank: int, world_size: int, options: TransportOptions, grouped: bool) -> dict[str, bool]:
    transport = open_transport(address(rank, world_size), options)
    # a party group of all but the last rank (the dealer's place), or the whole transport
    size = world_size - 1 if grouped else world_size
    comm = PartyGroup(transport, size) if grouped and rank < size else transport
    checks: dict[str, bool] = {}
    try:
        if rank < size:
            after, before = (rank + 1) % size, (rank - 1) % size
            if rank == 0:  # around the ring: gloo's send waits for the matching receive
                comm.send_obj(_object(rank), after)
            checks["recv_obj"] = _same(comm.recv_obj(before), _object(before))
            if rank != 0:
                comm.send_obj(_object(rank), after)
            # recv returns the message and leaves the tensor it was given as it was
            if rank == 0:
                comm.send(torch.arange(6).reshape(2, 3) + rank, after)
            into = torch.ones(2, 3, dtype=torch.int64)
            received = comm.recv(into, before)
            checks["recv"] = (torch.equal(received, torch.arange(6).reshape(2, 3) + before)
                              and torch.equal(into, torch.ones(2, 3, dtype=torch.int64)))
            if rank != 0:
                comm.send(torch.arange(6).reshape(2, 3) + rank, after)
            checks["broadcast_obj"] = _same(comm.broadcast_obj(_object(1) if rank == 1 else None, 1), _object(1))
            gathered = comm.gather_obj(_object(rank), 0)
            checks["gather_obj"] = _same(gathered, [_object(r) for r in range(size)]) if rank == 0 else gathered is None
            mine = torch.full((4,), rank + 1, dtype=torch.int64)
            reduced = comm.reduce(mine, 0)
            checks["reduce"] = torch.equal(reduced, mine * 0 + sum(range(1, size + 1))) if rank == 0 else reduced is None
            batch = comm.reduce([mine, mine.clone()], 0, batched=True)
            checks["reduce_batched"] = len(batch) == 2 if rank == 0 else batch is None
            gathered = comm.gather(mine, 0)
            checks["gather"] = len(gathered) == size if rank == 0 else gathered == [None]
            parameter = torch.nn.Parameter(torch.full((3,), float(rank)))
            comm.broadcast(parameter, 0)  # like CrypTen's tests syncing a module's weights
            checks["broadcast_into_parameter"] = torch.equal(parameter.detach(), torch.zeros(3))
            checks["parameter_still_a_leaf"] = parameter.requires_grad and parameter.grad_fn is None
            # an expanded share (CrypTen's broadcasting) has stride 0 on its size-1 dimensions
            # and still counts as contiguous; empty_like keeps the stride 0
            single = torch.tensor(rank + 1).expand(1, 1)
            checks["all_reduce_expanded"] = torch.equal(comm.all_reduce(single),
                                                        torch.full((1, 1), sum(range(1, size + 1))))
            target = single.clone() if rank == 0 else torch.empty_like(single)
            comm.broadcast(target, 0)
            checks["broadcast_into_expanded"] = torch.equal(target, torch.ones(1, 1, dtype=torch.int64))
            checks.update(_independent_batch_results(comm, rank, size))
        transport.barrier()
    finally:
        transport.close()
    return checks


def _independent_batch_results(comm: object, rank: int, size: int) -> dict[str, bool]:
    """A batched all-reduce's results may share one buffer (one message, or gloo's one flat
    reduction): writing into each in place, as CrypTen does to shares, leaves the others as
    they were. Small and large tensors (copied and adopted payloads), sums and XORs."""
    from torch.distributed import ReduceOp

    checks = {}
    shapes = [(3,), (5, 4), (20_000,), (9_000,)]  # the last two past the zero-copy size
    for op, name in ((ReduceOp.SUM, "sum"), (ReduceOp.BXOR, "xor")):
        inputs = [[torch.full(shape, (r + 1) * (i + 2), dtype=torch.int64) for i, shape in enumerate(shapes)]
                  for r in range(size)]
        expected = [inputs[0][i].clone() for i in range(len(shapes))]
        for r in range(1, size):
            for i in range(len(shapes)):
                expected[i] = expected[i] + inputs[r][i] if op == ReduceOp.SUM else expected[i] ^ inputs[r][i]
        results = comm.all_reduce(inputs[rank], op=op, batched=True)
        intact = all(torch.equal(g, e) for g, e in zip(results, expected))
        for i, result in enumerate(results):
            result.add_(7).mul_(-3)  # each result in turn, in place
            expected[i] = (expected[i] + 7) * -3
            intact &= all(torch.equal(g, e) for g, e in zip(results, expected))
        checks[f"batch_results_independent_{name}"] = intact
    return checks


def _gloo_options() -> TransportOptions:
    return TransportOptions(name="gloo", master_port=free_ports(1)[0], timeout_s=30, connect_timeout_s=30)


@pytest.mark.slow
@pytest.mark.parametrize("transport, world_size, grouped", [("zmq", 2, False), ("gloo", 3, False), ("zmq", 3, True)])
def test_crypten_communicator_surface(transport: str, world_size: int, grouped: bool) -> None:
    options = zmq_options(world_size) if transport == "zmq" else _gloo_options()
    results = values(run_parties(_surface, world_size, world_size, options, grouped, timeout_s=120), world_size)
    for rank, checks in enumerate(results[: world_size - grouped]):
        assert checks and all(checks.values()), f"rank {rank}: {checks}"


# -- a lying peer: tensors inside objects are checked before they are built --------------------
def _ext(header: list, payload: bytes, code: int = TENSOR_EXT) -> bytes:
    return msgpack.packb({"x": msgpack.ExtType(code, msgpack.packb(header) + payload)}, use_bin_type=True)


@pytest.mark.parametrize("message, complaint", [
    (_ext(["int64", [4]], b"\0" * 8), "in 8 bytes"),               # fewer bytes than the shape needs
    (_ext(["int64", [1]], b"\0" * 16), "in 16 bytes"),             # more bytes than the shape needs
    (_ext(["object", [1]], b"\0" * 8), "unknown dtype 'object'"),  # not a wire dtype
    (_ext(["int64", [-1]], b""), "malformed header"),              # negative size
    (_ext(["int64"], b""), "malformed header"),                     # no shape
    (_ext(["int64", [1]], b"\0" * 8, code=2), "unknown extension type 2"),
], ids=["short", "long", "dtype", "negative-size", "no-shape", "extension-code"])
def test_malformed_tensor_in_object_is_refused(message: bytes, complaint: str) -> None:
    with pytest.raises(WireError, match=complaint) as raised:
        unpack_object(message, "party 1 (p1)", 1 << 20)
    assert "party 1 (p1)" in str(raised.value)


def test_objects_refuse_what_only_pickles_carry() -> None:
    with pytest.raises(TypeError, match="cannot send object of type Linear"):
        pack_object({"model": torch.nn.Linear(2, 1)})


def test_tensor_round_trip_keeps_dtype_shape_and_values() -> None:
    message = _object(3)
    assert _same(unpack_object(pack_object(message), "p", 1 << 20), message)


def _plain(obj: object) -> object:
    """An object with tuples and sizes as lists and tensors as extensions, spelled out (how
    objects were packed before msgpack was left to walk them)."""
    if isinstance(obj, (tuple, list)):
        return [_plain(item) for item in obj]
    if isinstance(obj, dict):
        return {key: _plain(value) for key, value in obj.items()}
    return tensor_ext(obj) if torch.is_tensor(obj) else obj


def test_objects_pack_to_the_bytes_of_their_plain_form() -> None:
    """A dealer request's shape (tuple keys with sizes, names, nested kwargs) and tensors in
    lists and dicts pack to the same bytes as their lists-and-extensions form."""
    request = [("triple", "mul", torch.Size([512, 1]), (512, 1), (("alpha", 1.5),)),
               ("carry4", torch.Size([7, 64]), None, True, b"\x00\x01"),
               {"tensors": [torch.arange(6, dtype=torch.int64).reshape(2, 3), torch.tensor(True)],
                "empty": torch.empty(0, 2), "nested": ((torch.Size([]), -3), [])}]
    assert pack_object(request) == msgpack.packb(_plain(request), use_bin_type=True)
    assert _same(unpack_object(pack_object(request[2]), "p", 1 << 20), request[2])
