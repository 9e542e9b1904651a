"""Fixed-point arithmetic on this party's raw int64 shares, for hot paths that CrypTen's object
layers would slow (W5's loss gradient: about 40 operations on 512 elements a step, where
each MPCTensor operation costs its shallow copies, encoders and dispatch).

Local operations (sums, public additions and integer multiples) are torch operations on
the share tensors, as CrypTen's own compute them. Everything that communicates or draws
randomness goes through the session's installed parts exactly as CrypTen would call them:
products through ``cfg.mpc.protocol``'s ``mul``/``square`` (Beaver with the triple source,
announced to a dealer, counted), divisions through ``ArithmeticSharedTensor.div_`` (the
truncation part) and ReLU through ``MPCTensor.relu`` (the comparison part). So the same
tuples are drawn in the same order, with the object path's rounds and bytes
(tests/test_sigmoid.py checks that, and both against plaintext).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from protocols.comparison import with_share


def applies(crypten: Any, *tensors: Any) -> bool:
    """Whether raw share arithmetic may stand in for ``tensors``' operations: plain arithmetic
    MPCTensors whose shares are unwrapped int64 tensors (not CUDA's wrapper, not a share type
    with MACs, whose own operations keep them)."""
    from crypten.mpc.primitives import ArithmeticSharedTensor
    from crypten.mpc.ptype import ptype

    return all(type(t) is crypten.mpc.MPCTensor and t.ptype == ptype.arithmetic
               and type(t._tensor) is ArithmeticSharedTensor and type(t._tensor.share) is torch.Tensor
               for t in tensors)


class ShareOps:
    """Operations on this party's shares of fixed-point values encoded at ``like``'s scale."""

    def __init__(self, crypten: Any, like: Any) -> None:
        from crypten.mpc.primitives import arithmetic

        self.crypten = crypten
        self.like = like
        self.scale = like.encoder.scale
        self.bits = self.scale.bit_length() - 1
        self.leader = crypten.communicator.get().get_rank() == 0
        self._arithmetic = arithmetic
        self._shared = arithmetic.ArithmeticSharedTensor

    def expect(self, operations: Sequence[tuple]) -> None:
        """Tell the triple source which products, divisions and ReLUs come next, in order, where
        it takes such a hint (a dealer's source: their tuples in one request the first time,
        not one request per operation; ``protocols.tuples.KeyedTripleSource.expect_operations``)."""
        announce = getattr(self.crypten.mpc.get_default_provider(), "expect_operations", None)
        if announce is not None:
            announce(operations)

    def share(self, x: Any) -> torch.Tensor:
        return x._tensor.share

    def plus(self, share: torch.Tensor, value: float) -> torch.Tensor:
        """x + value, value public: encoded as CrypTen encodes a Python number (toward zero)
        and added by party 0 only."""
        if not self.leader:
            return share
        return share + int(self.scale * value)  # int() truncates toward zero, as a cast to long

    def _sharing(self, share: torch.Tensor, scaled: bool) -> Any:
        return self._shared.from_shares(share, precision=self.bits if scaled else 0)

    def _protocol(self) -> Any:
        return getattr(self._arithmetic, self.crypten.cfg.mpc.protocol)

    def product(self, x: torch.Tensor, y: torch.Tensor, y_scaled: bool = True) -> torch.Tensor:
        """x y for x at the scale: truncated by it when y is at the scale too; with
        ``y_scaled`` False, y's shares are read as an integer sharing and x y is left at x's
        scale times y's encoding (no truncation)."""
        result = self._protocol().mul(self._sharing(x, True), self._sharing(y, y_scaled))
        return self.divide(result.share, self.scale) if y_scaled else result.share

    def square(self, x: torch.Tensor) -> torch.Tensor:
        """x^2, truncated (CrypTen's ``square``: its own protocol, then the division)."""
        return self.divide(self._protocol().square(self._sharing(x, True)).share, self.scale)

    def divide(self, share: torch.Tensor, divisor: int) -> torch.Tensor:
        """x / divisor by the truncation part (it may write over ``share``)."""
        sharing = self._shared.from_shares(share, precision=0)
        sharing.div_(divisor)
        return sharing.share

    def relu(self, share: torch.Tensor) -> torch.Tensor:
        """relu(x) by the session's comparison part."""
        return self.share(with_share(self.like, share).relu())

    def tensor(self, share: torch.Tensor) -> Any:
        """An MPCTensor at the scale holding ``share``."""
        return with_share(self.like, share)
