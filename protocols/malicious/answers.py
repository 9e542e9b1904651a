"""A request for tuples cut into dealer answers of bounded size.

One dealer answer (the dealer's clear values, every party's shares of them with their MACs,
each tuple's companion) costs the dealer and every party memory in proportion to the
elements it deals, so the engine asks for a training step's tuples as several answers of at
most ``limit`` dealt elements each (companions and random bits counted, as the dealer's
``validate`` counts them). Every answer's tuples join the batch check of dealt tuples that
runs before the next MAC check, so before anything they influenced is revealed or saved.

A tuple of an elementwise kind (one value per element of its shape: triples, truncation
bits, comparison bits, input and private masks, random values) bigger than ``limit`` is
dealt as pieces over a flat shape, each piece a tuple of its own with its own companion
(checked as such); the engine joins the pieces back into the tuple the program asked for
(``Engine._accept``). A bilinear tuple (matmul, batched matmul,
convolution) is never cut: one bigger than ``limit`` is an answer of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from protocols.malicious import dealer as dealing

ELEMENTWISE = ("triple", "trunc", "bits", "input", "private", "random")  # spec[1] is the shape


@dataclass(frozen=True)
class Piece:
    """One tuple of an answer: ``wire`` as the dealer is asked for it, the program's ``spec``
    it is (``whole``) or a piece of, and whether it completes that spec."""

    wire: list[Any]
    spec: list[Any]
    whole: bool
    last: bool


def dealt_elements(spec: Sequence[Any], checked: bool) -> int:
    """The elements the dealer deals for ``spec`` (with ``checked``: its companion's too)."""
    return sum(int(np.prod(shape, dtype=np.int64)) for shape in dealing.spec_shapes(spec, checked))


def _piece(spec: list[Any], count: int) -> list[Any]:
    return [spec[0], [count], *spec[2:]]


def cut(specs: Sequence[list[Any]], limit: int, checked: bool) -> list[list[Piece]]:
    """``specs`` as answers of at most ``limit`` dealt elements each, in order. A tuple that
    fits in an answer is never cut (the answer before it ends early if need be); a bigger
    elementwise one fills the rest of the current answer and as many more as it needs."""
    if limit < 1:
        raise ValueError(f"an answer must be allowed at least one element, not {limit}")
    answers: list[list[Piece]] = [[]]
    room = limit

    def add(piece: Piece, size: int) -> None:
        nonlocal room
        if size > room and answers[-1]:
            answers.append([])
            room = limit
        answers[-1].append(piece)
        room -= size

    for spec in specs:
        size = dealt_elements(spec, checked)
        if size <= limit or spec[0] not in ELEMENTWISE:
            add(Piece(spec, spec, True, True), size)
            continue
        fixed = dealt_elements(_piece(spec, 0), checked)  # a mask's companion: one per piece
        per_element = dealt_elements(_piece(spec, 1), checked) - fixed
        left = int(np.prod(spec[1], dtype=np.int64))
        while left:
            if room < fixed + per_element:  # not one more element fits: a new answer
                answers.append([])
                room = limit
            count = min(left, max(1, (room - fixed) // per_element))
            left -= count
            add(Piece(_piece(spec, count), spec, False, not left), fixed + count * per_element)
    return [answer for answer in answers if answer]
