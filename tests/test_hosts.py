"""Shares never cross a host boundary in the clear: the host check every party runs at start."""

from __future__ import annotations

import pytest

from parties.hosts import PlaintextAcrossHosts, host_identity, plaintext_refusal
from parties.transport import TransportOptions

NAMES = ("bank0", "bank1", "dealer")
ONE_HOST = [{"host": "a", "kernel": "k1"}] * 3
TWO_HOSTS = [{"host": "a", "kernel": "k1"}, {"host": "a", "kernel": "k1"}, {"host": "b", "kernel": "k2"}]


@pytest.mark.parametrize("name", ["gloo", "mpi"])
def test_plaintext_transport_across_hosts_is_refused(name):
    reason = plaintext_refusal(TWO_HOSTS, NAMES, TransportOptions(name=name))
    assert reason == (f"transport={name} carries shares unencrypted and unauthenticated, and the parties run on "
                      "2 hosts (bank0@a, bank1@a; dealer@b); use transport=zmq (CurveZMQ) or set "
                      "transport.allow_plaintext=true on every party")


def test_unencrypted_zmq_across_hosts_is_refused_too():
    reason = plaintext_refusal(TWO_HOSTS, NAMES, TransportOptions(name="zmq", encrypt=False))
    assert reason.startswith("transport=zmq with encrypt=false carries shares unencrypted")


@pytest.mark.parametrize("identities, options", [
    (ONE_HOST, TransportOptions(name="gloo")),  # one kernel: nothing leaves the machine
    (TWO_HOSTS, TransportOptions(name="zmq")),  # CurveZMQ encrypts and authenticates
    (TWO_HOSTS, TransportOptions(name="mpi", allow_plaintext=True)),  # the explicit choice
])
def test_allowed_jobs(identities, options):
    assert plaintext_refusal(identities, NAMES, options) is None


def test_a_malformed_host_identity_names_the_party():
    with pytest.raises(PlaintextAcrossHosts, match="bank1 sent a malformed host identity"):
        plaintext_refusal([ONE_HOST[0], {"host": 3}, ONE_HOST[0]], NAMES, TransportOptions(name="gloo"))


def test_host_identity_is_a_digest_of_this_kernel():
    identity = host_identity()
    assert identity == host_identity() and len(identity["kernel"]) == 16
    assert set(identity) == {"host", "kernel"}
