"""Which hosts the parties run on, and the refusal to carry shares between hosts in the clear.

gloo and MPI (and zmq with ``encrypt=false``) neither encrypt nor authenticate: on one host
their traffic stays inside the kernel, across hosts anyone on the path reads every share.
Right after the transport connects, before any share is sent, rank 0 gathers each process's
host identity, and every process stops if a plaintext transport spans more than one host
and ``transport.allow_plaintext`` is not set.

A host is one running kernel: its boot id (``/proc/sys/kernel/random/boot_id``, a random
UUID per boot, shared by every container and network namespace on that kernel), hashed so
peers learn only whether two parties share a machine. The host name is kept for messages.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from pathlib import Path
from typing import Any, Sequence

from parties.transport.base import TransportOptions

log = logging.getLogger("cotrain.party")
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class PlaintextAcrossHosts(RuntimeError):
    """An unencrypted transport would carry shares between hosts."""


def host_identity() -> dict[str, str]:
    """This process's host: its name and a digest of its kernel's boot id (of its name
    where there is no boot id)."""
    name = socket.gethostname()
    kernel = _BOOT_ID.read_text().strip() if _BOOT_ID.is_file() else name
    return {"host": name, "kernel": hashlib.sha256(b"cotrain-host:" + kernel.encode()).hexdigest()[:16]}


def encrypts(options: TransportOptions) -> bool:
    """Whether the transport encrypts and authenticates every frame (CurveZMQ)."""
    return options.name == "zmq" and options.encrypt


def plaintext_refusal(identities: Sequence[dict], names: Sequence[str], options: TransportOptions) -> str | None:
    """The reason to refuse this job (None: go ahead), from every process's host identity."""
    hosts: dict[str, list[str]] = {}
    for name, identity in zip(names, identities):
        if not (isinstance(identity, dict) and all(isinstance(identity.get(key), str) for key in ("host", "kernel"))):
            raise PlaintextAcrossHosts(f"{name} sent a malformed host identity")
        hosts.setdefault(identity["kernel"], []).append(f"{name}@{identity['host']}")
    if len(hosts) < 2 or encrypts(options) or options.allow_plaintext:
        return None
    where = "; ".join(", ".join(members) for members in hosts.values())
    wire = "transport=zmq with encrypt=false" if options.name == "zmq" else f"transport={options.name}"
    return (f"{wire} carries shares unencrypted and unauthenticated, and the parties run on {len(hosts)} hosts "
            f"({where}); use transport=zmq (CurveZMQ) or set transport.allow_plaintext=true on every party")


def check_host_boundary(transport: Any, options: TransportOptions) -> int:
    """Gather host identities at rank 0 and stop every process if shares would cross hosts in the
    clear; returns the number of hosts."""
    names = transport.address.names
    identities = transport.gather_obj(host_identity(), 0)
    verdict = None
    if transport.get_rank() == 0:
        verdict = {"hosts": len({identity["kernel"] for identity in identities}),
                   "refusal": plaintext_refusal(identities, names, options)}
    verdict = transport.broadcast_obj(verdict, 0)
    if verdict["refusal"]:
        raise PlaintextAcrossHosts(verdict["refusal"])
    if verdict["hosts"] > 1 and not encrypts(options):
        log.warning("transport.allow_plaintext=true: shares cross %d hosts over %s unencrypted and unauthenticated",
                    verdict["hosts"], options.name)
    return verdict["hosts"]
