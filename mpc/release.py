"""The release gate: the only way a secret value leaves MPC.

The run's config lists what may be opened and to whom (``release:``, one line per value).
Every opening in the engine calls :func:`open` (or :func:`publish` for a statistic one party
announces in the clear), which checks the policy first, refuses anything it does not name
with an error naming the value and the policy line, and records the opening in this party's
audit log (:mod:`mpc.audit`). Outside a run, where no gate is in force, every opening is
refused.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from mpc.audit import AuditLog, value_digest

# the values the engine opens, and what each is
RELEASABLE = {
    "scaling_statistics": "pooled column sums (with the positive count) and squared deviations (horizontal split)",
    "positive_count": "the label holder's count of positive labels (vertical split: class weights)",
    "heldout_labels": "the held-out labels, for the evaluator's metrics",
    "heldout_predictions": "the held-out logits after each epoch",
    "model": "the trained weights",
    "scores": "the scores of rows scored over the model's shares (cotrain predict shares=...)",
}
# names a release line may use besides party names
ROLES = {
    "all": "every party",
    "evaluator": "the party named by train.evaluator",
    "reveal_to": "the parties listed in train.reveal_to",
    "score_owner": "the party whose rows cotrain predict shares=... scores (its owner=)",
}


@dataclass
class ReleaseRule:
    """One ``release:`` line: ``what`` may be opened to the parties or roles in ``to``."""

    what: str = ""
    to: list[str] = field(default_factory=list)


def default_release() -> list[ReleaseRule]:
    """What the default job opens: the scaling statistics and the positive count to all, the
    held-out labels and predictions to the evaluator, the model to train.reveal_to; and what
    scoring over the shares opens: the scores, to the owner of the rows."""
    return [
        ReleaseRule("scaling_statistics", ["all"]),
        ReleaseRule("positive_count", ["all"]),
        ReleaseRule("heldout_labels", ["evaluator"]),
        ReleaseRule("heldout_predictions", ["evaluator"]),
        ReleaseRule("model", ["reveal_to"]),
        ReleaseRule("scores", ["score_owner"]),
    ]


class ReleaseRefused(PermissionError):
    """An opening the release policy does not allow."""


class ReleasePolicy:
    """The ``release:`` lines with the roles resolved to party names."""

    def __init__(self, rules: Sequence[ReleaseRule], names: Sequence[str], evaluator: int,
                 reveal_to: Sequence[str], score_owner: str | None = None) -> None:
        self.rules = list(rules)
        self.names = tuple(names)
        self._roles = {"all": set(names), "evaluator": {names[evaluator]}, "reveal_to": set(reveal_to),
                       "score_owner": {score_owner} if score_owner else set()}
        self.validate()

    def validate(self) -> None:
        """Every line names a known value and known parties or roles; raises ValueError."""
        for index, rule in enumerate(self.rules):
            if rule.what not in RELEASABLE:
                raise ValueError(f"{self.line(index)}: {rule.what!r} is not a value the engine opens; "
                                 f"choose one of {', '.join(RELEASABLE)}")
            unknown = [name for name in rule.to if name not in ROLES and name not in self.names]
            if unknown:
                raise ValueError(f"{self.line(index)}: {unknown[0]!r} is neither a party "
                                 f"({', '.join(self.names)}) nor one of {', '.join(ROLES)}")

    def line(self, index: int) -> str:
        rule = self.rules[index]
        return f"release[{index}] {{what: {rule.what}, to: [{', '.join(rule.to)}]}}"

    def allowed(self, index: int) -> set[str]:
        return set().union(*(self._roles.get(name, {name}) for name in self.rules[index].to))

    def check(self, what: str, recipients: Sequence[str]) -> None:
        """Raise :class:`ReleaseRefused` unless one line opens ``what`` to every recipient."""
        lines = [index for index, rule in enumerate(self.rules) if rule.what == what]
        if not lines:
            raise ReleaseRefused(f"opening {what!r} to {', '.join(recipients)} is refused: no release line "
                                 f"names {what!r} (add one such as release=[{{what: {what}, to: [...]}}])")
        for index in lines:
            if set(recipients) <= self.allowed(index):
                return
        index = lines[0]
        outside = sorted(set(recipients) - self.allowed(index))
        raise ReleaseRefused(f"opening {what!r} to {', '.join(outside)} is refused by the release policy: "
                             f"{self.line(index)} allows {', '.join(sorted(self.allowed(index))) or 'nobody'}")


class ReleaseGate:
    """One party's gate: checks the policy, opens, records."""

    def __init__(self, policy: ReleasePolicy, rank: int, audit: AuditLog) -> None:
        self.policy = policy
        self.rank = rank
        self.audit = audit
        self._steps: dict[str, int] = {}

    def _record(self, what: str, recipients: Sequence[str], shape: Sequence[int],
                plain: torch.Tensor | None) -> None:
        step = self._steps[what] = self._steps.get(what, 0) + 1
        digest = value_digest(plain) if plain is not None else None
        self.audit.record(what, recipients, shape, step, digest)

    def open(self, value: Any, what: str, to: int | None = None) -> torch.Tensor | None:
        """The plaintext of a secret-shared ``value`` at party ``to`` (every party if None), in
        host memory; None at the parties that do not receive it."""
        recipients = list(self.policy.names) if to is None else [self.policy.names[to]]
        self.policy.check(what, recipients)
        plain = value.get_plain_text() if to is None else value.get_plain_text(dst=to)
        plain = plain.cpu() if plain is not None else None  # released values are used (and kept) on the host
        learns = to is None or to == self.rank
        self._record(what, recipients, tuple(value.size()), plain if learns else None)
        return plain if learns else None

    def open_with(self, opener: Callable[[], Any], what: str, to: int | None = None,
                  shape: Sequence[int] | None = None) -> Any:
        """Values that a protocol of its own opens (an exact secure sum; the malicious engine's
        MAC-checked reveal): to every party, or to party ``to`` only, where ``opener`` returns
        None at the others, which record ``shape``."""
        recipients = list(self.policy.names) if to is None else [self.policy.names[to]]
        self.policy.check(what, recipients)
        values = opener()
        plain = torch.as_tensor(np.asarray(values, dtype=np.float64)) if to is None or to == self.rank else None
        self._record(what, recipients, tuple(plain.shape) if shape is None else tuple(shape), plain)
        return values

    def publish(self, comm: Any, value: int | float | None, what: str, src: int) -> float:
        """A plain number party ``src`` holds, announced to every party."""
        self.policy.check(what, list(self.policy.names))
        announced = comm.broadcast_obj(value if self.rank == src else None, src)
        self._record(what, list(self.policy.names), (), torch.tensor(float(announced)))
        return announced


_gate: ReleaseGate | None = None


@contextmanager
def enforced(gate: ReleaseGate) -> Iterator[ReleaseGate]:
    """Put ``gate`` in force for this party process while the block runs."""
    global _gate
    previous, _gate = _gate, gate
    try:
        yield gate
    finally:
        _gate = previous


def _current(what: str) -> ReleaseGate:
    if _gate is None:
        raise ReleaseRefused(f"opening {what!r} is refused: no release policy is in force in this process")
    return _gate


def open(value: Any, what: str, to: int | None = None) -> torch.Tensor | None:  # noqa: A001 (release.open)
    """Open ``value`` through the gate in force; see :meth:`ReleaseGate.open`."""
    return _current(what).open(value, what, to)


def open_with(opener: Callable[[], Any], what: str, to: int | None = None,
              shape: Sequence[int] | None = None) -> Any:
    """Open by ``opener`` through the gate in force; see :meth:`ReleaseGate.open_with`."""
    return _current(what).open_with(opener, what, to, shape)


def publish(comm: Any, value: int | float | None, what: str, src: int) -> float:
    """Announce a plain number through the gate in force; see :meth:`ReleaseGate.publish`."""
    return _current(what).publish(comm, value, what, src)


def required_openings(partition: str, has_heldout: bool, reveal_to: Sequence[str],
                      evaluator: str, names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """What a job with these settings opens, and to whom: checked before any party starts."""
    # a horizontal split's positive count comes with its scaling statistics
    needed = [("scaling_statistics" if partition == "horizontal" else "positive_count", list(names))]
    if has_heldout:
        needed += [("heldout_labels", [evaluator]), ("heldout_predictions", [evaluator])]
    if reveal_to:
        needed.append(("model", list(reveal_to)))
    return needed

