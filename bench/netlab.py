"""A small network lab: one network namespace per party, joined through a hub namespace.

Each party namespace gets ``eth0`` (10.231.<subnet>.<rank + 1>/24), a veth pair into the hub
namespace, and a ``tc tbf`` rate limit on both ends of its link. The hub joins the links with
a kernel bridge, or, when latency is asked for, with :mod:`delay_bridge` (this kernel has no
netem). Everything is removed on exit, even after errors. Needs root and ``ip netns``.

    with NetLab(3, rate="100mbit", delay_ms=5) as lab:
        lab.popen(0, ["python", "-c", "..."])
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

BRIDGE_SCRIPT = Path(__file__).resolve().parent / "delay_bridge.py"
MTU = 65000  # big frames keep the user-space bridge far from its packet-rate limit


class NetLabUnavailable(RuntimeError):
    """This machine cannot build namespaces (no root, no ip netns, or no tc)."""


def _ip(*arguments: str) -> None:
    completed = subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=30)
    if completed.returncode != 0:
        raise RuntimeError(f"ip {' '.join(arguments)} failed: {completed.stderr.strip()}")


def _in(namespace: str, *command: str) -> None:
    completed = subprocess.run(["ip", "netns", "exec", namespace, *command], capture_output=True, text=True,
                               timeout=30)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} in {namespace} failed: {completed.stderr.strip()}")


def check_available() -> None:
    """Raise NetLabUnavailable with the reason when namespaces cannot be built here."""
    probe = f"ctprobe{secrets.token_hex(3)}"
    try:
        completed = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired) as error:
        raise NetLabUnavailable(f"`ip netns` is not usable here: {error}") from None
    if completed.returncode != 0:
        raise NetLabUnavailable(f"`ip netns add` failed: {completed.stderr.strip() or completed.returncode}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    if subprocess.run(["which", "tc"], capture_output=True).returncode != 0:
        raise NetLabUnavailable("`tc` is not installed")


class NetLab:
    def __init__(self, parties: int, rate: str = "1gbit", delay_ms: float = 0.0) -> None:
        self.parties = parties
        self.rate = rate
        self.delay_ms = delay_ms
        tag = secrets.token_hex(3)
        self.hub = f"ct{tag}hub"
        self.namespaces = [f"ct{tag}p{rank}" for rank in range(parties)]
        subnet = 1 + secrets.randbelow(250)
        self.addresses = [f"10.231.{subnet}.{rank + 1}" for rank in range(parties)]
        self._bridge: subprocess.Popen | None = None
        self._processes: list[subprocess.Popen] = []
        self._created: list[str] = []

    # -- building and tearing down --------------------------------------------------------
    def __enter__(self) -> "NetLab":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _limit(self, namespace: str, device: str) -> None:
        _in(namespace, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", self.rate,
            "burst", "512kb", "latency", "200ms")

    def _build(self) -> None:
        self._add_namespace(self.hub)
        hub_ports = []
        for rank, (namespace, address) in enumerate(zip(self.namespaces, self.addresses)):
            self._add_namespace(namespace)
            port = f"p{rank}"
            _ip("-n", namespace, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.hub)
            for ns, device in ((namespace, "eth0"), (self.hub, port)):
                _ip("-n", ns, "link", "set", device, "mtu", str(MTU), "gso_max_size", str(MTU))
                self._limit(ns, device)
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", self.hub, "link", "set", port, "up", "promisc", "on")
            hub_ports.append(port)
        if self.delay_ms > 0:
            self._bridge = subprocess.Popen(
                ["ip", "netns", "exec", self.hub, sys.executable, str(BRIDGE_SCRIPT), "--delay-ms",
                 str(self.delay_ms), *hub_ports], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = self._bridge.stdout.readline() if self._bridge.stdout else ""
            if "ready" not in line:
                reason = self._bridge.stderr.read() if self._bridge.stderr else ""
                raise RuntimeError(f"the delay bridge did not start: {reason}")
        else:
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            for port in hub_ports:
                _ip("-n", self.hub, "link", "set", port, "master", "br0")
            _ip("-n", self.hub, "link", "set", "br0", "up")
        self._wait_for_links()

    def _wait_for_links(self, timeout_s: float = 10.0) -> None:
        """Until every party reaches party 0 (a refused TCP connection proves the path works)."""
        probe = ("import socket,sys\n"
                 "try:\n socket.create_connection((sys.argv[1], 9), timeout=0.5)\n"
                 "except ConnectionRefusedError:\n sys.exit(0)\n"
                 "except OSError:\n sys.exit(1)\n")
        deadline = time.monotonic() + timeout_s
        for rank in range(1, self.parties):
            while subprocess.run(["ip", "netns", "exec", self.namespaces[rank], sys.executable, "-c", probe,
                                  self.addresses[0]], capture_output=True, timeout=30).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"party {rank} cannot reach {self.addresses[0]} in the lab")
                time.sleep(0.1)

    def close(self) -> None:
        for process in [*self._processes, *([self._bridge] if self._bridge else [])]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self._processes, *([self._bridge] if self._bridge else [])]:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self._processes.clear()
        self._bridge = None
        for name in reversed(self._created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self._created.clear()

    # -- running things inside ------------------------------------------------------------
    def popen(self, rank: int, command: Sequence[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
        """Start ``command`` inside party ``rank``'s namespace; it is stopped when the lab closes."""
        environment = {**os.environ, **(env or {})}
        process = subprocess.Popen(["ip", "netns", "exec", self.namespaces[rank], *command], env=environment,
                                   **kwargs)
        self._processes.append(process)
        return process


def namespaces_left(prefix: str = "ct") -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in listing.splitlines() if line.startswith(prefix)]
