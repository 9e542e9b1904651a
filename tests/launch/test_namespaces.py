"""Many hosts, simulated: one party per network namespace, rate-limited links, added latency.

Each party runs as its own `cotrain run party.rank=i ...` command inside its namespace, as it
would on its own host. Timings are not asserted here (see bench/wan_bench.py); the job must
finish and match plaintext. Skips where namespaces cannot be built (no root or no ip netns).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from launch_helpers import REPO, assert_close_to_plaintext, tiny

sys.path.insert(0, str(REPO / "bench"))
from lab_jobs import run_lab_job  # noqa: E402
from netlab import NetLab, NetLabUnavailable, check_available, namespaces_left  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def namespaces_available() -> None:
    try:
        check_available()
    except NetLabUnavailable as reason:
        pytest.skip(f"network namespaces unavailable here: {reason}")


def settings() -> list:
    """gloo on a fast link and on a slow one with latency; zmq too once it is registered."""
    from parties.transport import transport_names

    cases = [pytest.param("gloo", "1gbit", 0.0, id="gloo-1gbit"),
             pytest.param("gloo", "100mbit", 1.0, id="gloo-100mbit-2ms-rtt")]
    if "zmq" in transport_names():
        cases.append(pytest.param("zmq", "1gbit", 0.0, id="zmq-1gbit"))
    return cases


@pytest.mark.parametrize("transport, rate, delay_ms", settings())
def test_one_party_per_namespace(tmp_path: Path, transport: str, rate: str, delay_ms: float) -> None:
    run_id = f"netns-{uuid.uuid4().hex[:8]}"
    with NetLab(3, rate=rate, delay_ms=delay_ms) as lab:
        names = list(lab.namespaces)
        try:
            result, _ = run_lab_job(lab, transport, tmp_path, run_id, tiny(3, tmp_path, run_id)[1:], timeout_s=240)
        finally:
            lab.close()
            assert not [name for name in namespaces_left() if name in names], "namespaces were left behind"
    assert_close_to_plaintext(result, 3, transport)
