"""Time per epoch over simulated WAN links: one party per network namespace.

Each setting builds a fresh lab (see netlab.py): a `tc tbf` rate limit on every link and,
for latency, the user-space delay bridge (this kernel has no netem). It first measures the
link it built (TCP round trip and bulk throughput between two parties), then runs a short
training job with one `cotrain run party.rank=i` per namespace and reports seconds per epoch.
Needs root. Example:

    .venv/bin/python bench/wan_bench.py                     # the default table, ~4 min
    .venv/bin/python bench/wan_bench.py --settings 100mbit:40 --rows 300 --epochs 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lab_jobs import run_lab_job  # noqa: E402
from netlab import NetLab, check_available  # noqa: E402

DEFAULT_SETTINGS = ("1gbit:0", "1gbit:10", "1gbit:40", "100mbit:10", "100mbit:40")

_PROBE_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 5201)); s.listen()
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(20):
    c.sendall(c.recv(1))
total = 0
while True:
    chunk = c.recv(1 << 20)
    if not chunk:
        break
    total += len(chunk)
"""

_PROBE_CLIENT = """
import socket, statistics, sys, time
c = socket.create_connection((sys.argv[1], 5201)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtts = []
for _ in range(20):
    t = time.perf_counter(); c.sendall(b'x'); c.recv(1); rtts.append(time.perf_counter() - t)
block = b'z' * (1 << 20)
megabytes = int(sys.argv[2])
t = time.perf_counter()
for _ in range(megabytes):
    c.sendall(block)
c.shutdown(socket.SHUT_WR); c.recv(1)
print(statistics.median(rtts) * 1000, megabytes * 1.048576 / (time.perf_counter() - t))
"""


def measure_link(lab: NetLab, megabytes: int) -> tuple[float, float]:
    """Median TCP round trip (ms) and bulk throughput (MB/s) from party 1 to party 0."""
    server = lab.popen(0, [sys.executable, "-c", _PROBE_SERVER])
    time.sleep(0.5)
    client = lab.popen(1, [sys.executable, "-c", _PROBE_CLIENT, lab.addresses[0], str(megabytes)],
                       stdout=subprocess.PIPE, text=True)
    output, _ = client.communicate(timeout=300)
    server.wait(timeout=30)
    rtt, throughput = map(float, output.split())
    return rtt, throughput


def run_setting(rate: str, rtt_ms: float, arguments: argparse.Namespace) -> dict:
    with NetLab(arguments.parties, rate=rate, delay_ms=rtt_ms / 2) as lab:
        link_rtt, link_mbps = measure_link(lab, 50 if rate.startswith("1g") else 10)
        with tempfile.TemporaryDirectory(prefix="wan-bench-") as scratch:
            run_id = f"wan-{uuid.uuid4().hex[:8]}"
            overrides = [f"data.rows={arguments.rows}", "data.test_rows=300", f"train.epochs={arguments.epochs}",
                         f"train.batch_size={arguments.batch_size}", f"model={arguments.model}",
                         "transport.timeout_s=300", "log_level=WARNING", "protocol=tfp"]  # one process per namespace
            summary, _ = run_lab_job(lab, arguments.transport, Path(scratch), run_id, overrides, timeout_s=1800)
    epochs = summary["per_epoch"]
    return {
        "rate": rate, "rtt": rtt_ms, "link_rtt": link_rtt, "link_MBps": link_mbps,
        "epoch_s": statistics.mean(e["seconds"] for e in epochs),
        "rounds": statistics.mean(e["rounds"] for e in epochs),
        "MB": statistics.mean(e["bytes_sent"] for e in epochs) / 1e6,
        "auc_gap": summary["gaps"]["auc"]["gap"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS),
                        help="rate:rtt_ms pairs, e.g. 1gbit:0 100mbit:40")
    parser.add_argument("--parties", type=int, default=3)
    parser.add_argument("--rows", type=int, default=150, help="training rows per party")
    parser.add_argument("--batch-size", type=int, default=75)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model", default="logreg")
    parser.add_argument("--transport", default="gloo", choices=["gloo", "zmq"])
    arguments = parser.parse_args()
    check_available()
    print(f"{arguments.parties} parties, {arguments.model}, {arguments.rows} rows each, batch "
          f"{arguments.batch_size}, transport {arguments.transport}; one party per network namespace", flush=True)
    header = (f"{'link':>8} {'RTT ms':>7} | {'measured RTT ms':>15} {'MB/s':>7} | {'s/epoch':>8} "
              f"{'rounds/epoch':>12} {'MB sent/epoch':>13} {'AUC gap':>8}")
    print(header)
    print("-" * len(header), flush=True)
    for setting in arguments.settings:
        rate, _, rtt = setting.partition(":")
        row = run_setting(rate, float(rtt or 0), arguments)
        print(f"{row['rate']:>8} {row['rtt']:>7g} | {row['link_rtt']:>15.2f} {row['link_MBps']:>7.1f} | "
              f"{row['epoch_s']:>8.2f} {row['rounds']:>12.0f} {row['MB']:>13.2f} {row['auc_gap']:>8.4f}", flush=True)


if __name__ == "__main__":
    main()
