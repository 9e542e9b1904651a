"""The binary tensor header: what is encoded decodes to the same fields, and a header whose
lengths or codes do not add up is refused naming the peer."""

from __future__ import annotations

import pytest
import torch

from parties.transport import WireError
from parties.transport.tensor_header import FIXED, OPS, decode, encode, op_name

TENSORS = [torch.zeros(3, 5, dtype=torch.int64), torch.zeros((), dtype=torch.bfloat16), torch.zeros(0, 2, dtype=torch.bool)]


def test_round_trip() -> None:
    header = decode(encode("all_reduce", 2**40 + 3, 7, TENSORS), "party 1 (p1)")
    assert (header.op, header.sender, header.seq) == ("all_reduce", 7, 2**40 + 3)
    assert header.dtypes == ["int64", "bfloat16", "bool"]
    assert header.shapes == [[3, 5], [], [0, 2]]
    assert decode(encode("bye", 0, 1, []), "peer").dtypes == []


def test_every_op_has_a_code() -> None:
    assert [op_name(FIXED.unpack_from(encode(op, 0, 0, []))[0]) for op in OPS] == list(OPS)
    assert op_name(200) == "unknown op 200"


def test_unsendable_messages_refused() -> None:
    with pytest.raises(WireError, match="cannot be sent"):
        encode("p2p", 0, 0, [torch.zeros(1, dtype=torch.complex64)])
    with pytest.raises(WireError, match="at most 65535"):
        encode("p2p", 0, 0, [torch.zeros(1)] * 65536)


@pytest.mark.parametrize("cut, match", [
    (lambda h: h[:5], "fewer than"),
    (lambda h: h[:FIXED.size + 1], "ends inside its tensor list"),
    (lambda h: h[:-1], "ends inside a shape"),
    (lambda h: h + b"\x00", "1 bytes after"),
    (lambda h: bytes([99]) + h[1:], "unknown op code 99"),
    (lambda h: h[:FIXED.size] + bytes([250]) + h[FIXED.size + 1:], "unknown dtype code 250"),
])
def test_malformed_headers_refused_naming_the_peer(cut, match) -> None:
    header = encode("p2p", 4, 1, [torch.zeros(4, dtype=torch.int64)])
    with pytest.raises(WireError, match=f"party 1 \\(p1\\) sent.*{match}"):
        decode(cut(header), "party 1 (p1)")
