"""The audit log: every value a party opened, in order, as an append-only hash chain.

Each party writes ``audit.jsonl`` in its own output folder: one JSON object per line with
what was opened, to whom, its shape, its step (the how-manieth opening of that value in the
run: for per-epoch values, the epoch), the SHA-256 of the revealed value where this party
learned it, the time, and ``prev``/``hash``: the hash of the previous entry and of this one,
so an edited, dropped, inserted or reordered line breaks the chain. Since every party runs
the same sequence of openings, the parties' logs must also agree entry by entry; a party
that rewrote its whole chain is caught by that comparison.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

GENESIS = "0" * 64
AUDIT_FILE = "audit.jsonl"
AGREED_FIELDS = ("what", "to", "shape", "step")  # what every party's entry i must share


def value_digest(value: torch.Tensor) -> str:
    """SHA-256 of the revealed value as float64 bytes (shape included)."""
    plain = value.detach().to("cpu", torch.float64).contiguous()
    header = json.dumps(list(plain.shape)).encode()
    return hashlib.sha256(header + plain.numpy().tobytes()).hexdigest()


def entry_hash(entry: dict) -> str:
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class AuditLog:
    """One party's append-only log; each line is flushed to disk before the run goes on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last, self._seq = GENESIS, 0
        if path.is_file():  # a rerun under the same run id continues the chain
            entries = read_log(path)
            if entries:
                self._last, self._seq = entries[-1]["hash"], entries[-1]["seq"] + 1

    def record(self, what: str, to: Sequence[str], shape: Sequence[int], step: int,
               digest: str | None) -> dict:
        entry: dict[str, Any] = {
            "seq": self._seq, "what": what, "to": list(to), "shape": list(shape), "step": step,
            "digest": digest, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "prev": self._last,
        }
        entry["hash"] = entry_hash(entry)
        with self.path.open("a", encoding="utf-8") as log_file:
            log_file.write(json.dumps(entry, sort_keys=True) + "\n")
            log_file.flush()
            os.fsync(log_file.fileno())
        self._last, self._seq = entry["hash"], self._seq + 1
        return entry


class AuditError(ValueError):
    """An audit log cannot be read."""


def read_log(path: Path) -> list[dict]:
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise AuditError(f"{path}: line {number} is not JSON ({error.msg})") from None
        if not isinstance(entry, dict):
            raise AuditError(f"{path}: line {number} is not a JSON object")
        entries.append(entry)
    return entries


def chain_problem(party: str, entries: Sequence[dict]) -> str | None:
    """The first break in one party's chain, or None if it is intact."""
    previous = GENESIS
    for number, entry in enumerate(entries, start=1):
        where = f"{party}: entry {number} ({_describe(entry)})"
        if entry.get("prev") != previous:
            return f"{where}: does not follow entry {number - 1} (an entry was dropped, inserted or reordered)"
        if entry.get("hash") != entry_hash(entry):
            return f"{where}: its hash does not match its content (the entry was edited)"
        if entry.get("seq") != number - 1:
            return f"{where}: sequence number {entry.get('seq')!r}, expected {number - 1}"
        previous = entry["hash"]
    return None


def _describe(entry: dict) -> str:
    return (f"{entry.get('what')} to {','.join(entry.get('to') or [])} shape {entry.get('shape')} "
            f"step {entry.get('step')}")


def agreement_problem(logs: dict[str, Sequence[dict]]) -> str | None:
    """The first entry where the parties' logs disagree, or None."""
    (first, reference), *others = logs.items()
    for party, entries in others:
        for number, (mine, theirs) in enumerate(zip(reference, entries), start=1):
            if any(mine.get(key) != theirs.get(key) for key in AGREED_FIELDS):
                return (f"entry {number} differs: {first} logged {_describe(mine)}, "
                        f"{party} logged {_describe(theirs)}")
        if len(entries) != len(reference):
            shorter, longer = (party, first) if len(entries) < len(reference) else (first, party)
            extra = max(reference, entries, key=len)[min(len(reference), len(entries))]
            return (f"entry {min(len(reference), len(entries)) + 1} differs: {longer} logged "
                    f"{_describe(extra)}, {shorter}'s log ends before it")
    for number, entries in enumerate(zip(*logs.values()), start=1):
        digests = {party: entry["digest"] for party, entry in zip(logs, entries) if entry.get("digest")}
        if len(set(digests.values())) > 1:
            return (f"entry {number} ({_describe(entries[0])}): the parties that learned it logged "
                    f"different values ({', '.join(f'{p} {d[:12]}' for p, d in digests.items())})")
    return None


@dataclass
class AuditReport:
    parties: list[str]
    entries: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run(run_dir: Path, parties: Sequence[str]) -> AuditReport:
    """Check every party's chain, then that all parties logged the same openings."""
    logs: dict[str, list[dict]] = {}
    problems = []
    for party in parties:
        path = run_dir / party / AUDIT_FILE
        if not path.is_file():
            problems.append(f"{party}: no audit log at {path}")
            continue
        try:
            logs[party] = read_log(path)
        except AuditError as error:
            problems.append(str(error))
            continue
        broken = chain_problem(party, logs[party])
        if broken:
            problems.append(broken)
    if not problems and len(logs) > 1:
        disagreement = agreement_problem(logs)
        if disagreement:
            problems.append(disagreement)
    return AuditReport(list(parties), max((len(e) for e in logs.values()), default=0), problems)
