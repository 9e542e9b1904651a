"""``make conformance``: CrypTen's upstream tests in every cell, and a table of the outcomes.

    python tests/conformance/matrix.py [--cells zmq/tfp/2p,...] [--files test_mpc,...] [-k substring]

Prints passed / failed / skipped per cell (transport x suite x parties), every skip with its
reason, every test run with a suite setting changed (and why), and every failure with its first lines; writes the whole record as JSON
(``--json``, default ``outputs/conformance/<time>.json``). Exits non-zero if any test failed.
Workers' logs go to ``outputs/conformance/logs/``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crypten_suite import FILES, REPO, TEST_TIMEOUT_S, Outcome, all_cells, run_cell  # noqa: E402


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="", help="comma-separated cell names (transport/suite/Np); default all")
    parser.add_argument("--files", default=",".join(FILES), help="comma-separated upstream test modules")
    parser.add_argument("-k", dest="match", default="", help="run only test ids containing one of these (comma-separated)")
    parser.add_argument("--json", default="", help="where to write the record")
    parser.add_argument("--test-timeout", type=float, default=TEST_TIMEOUT_S, help="seconds per test, all ranks")
    return parser.parse_args()


def _first_lines(text: str, count: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    tail = [line for line in lines if "Error" in line or "assert" in line.lower()][-count:]
    return " | ".join(tail or lines[-count:])


def _file_of(test_id: str) -> str:
    return test_id.split(".", 1)[0]


def print_report(record: dict) -> None:
    """Per cell and file: passed / failed / skipped, seconds of test time and CPU seconds (all
    ranks; on a shared machine the seconds follow the load, the CPU seconds much less)."""
    header = f"{'cell':<16}{'file':<22}{'passed':>7}{'failed':>7}{'skipped':>8}{'seconds':>9}{'cpu s':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, cell in record["cells"].items():
        for module in record["files"]:
            results = [r for test_id, r in cell["results"].items() if _file_of(test_id) == module]
            rule_skips = sum(_file_of(test_id) == module for test_id in cell["skipped"])
            if not results and not rule_skips:
                continue
            counts = collections.Counter(result["outcome"] for result in results)
            seconds = sum(result["seconds"] for result in results)
            cpu = sum(result.get("cpu_s", 0.0) for result in results)
            print(f"{name:<16}{module:<22}{counts['passed']:>7}{counts['failed']:>7}"
                  f"{counts['skipped'] + rule_skips:>8}{seconds:>9.0f}{cpu:>8.0f}")
        print(f"{name:<16}{'(whole cell)':<22}{'':>22}{cell['seconds']:>9.0f}   workers started {cell['starts']}x")
    reasons: dict[str, set] = collections.defaultdict(set)
    for name, cell in record["cells"].items():
        for test_id, reason in cell["skipped"].items():
            reasons[reason].add(test_id.rsplit(".", 1)[0] if "TestTTP" in test_id or "TestRSS" in test_id else test_id)
        for test_id, result in cell["results"].items():
            if result["outcome"] == "skipped":
                reasons[f"upstream: {result['detail']}"].add(test_id)
    print("\nskipped, by reason:")
    for reason, tests in sorted(reasons.items()):
        print(f"- {reason}\n    {', '.join(sorted(tests))}")
    adapted: dict[str, list[str]] = collections.defaultdict(list)
    for name, cell in record["cells"].items():
        for test_id, reason in cell.get("adapted", {}).items():
            adapted[f"{test_id}: {reason}"].append(name)
    if adapted:
        print("\nrun with a suite setting changed:")
        for test, names in sorted(adapted.items()):
            print(f"- {test}\n    in {', '.join(names)}")
    failures = [(name, test_id, result["detail"]) for name, cell in record["cells"].items()
                for test_id, result in cell["results"].items() if result["outcome"] == "failed"]
    print(f"\nfailed: {len(failures)}")
    for name, test_id, detail in failures:
        print(f"- {name} {test_id}: {_first_lines(detail)[:400]}")


def main() -> int:
    args = _parse()
    cells = all_cells()
    if args.cells:
        wanted = set(args.cells.split(","))
        cells = [cell for cell in cells if cell.name in wanted]
    files = [name for name in args.files.split(",") if name]
    out_dir = REPO / "outputs" / "conformance"
    record = {"files": files, "cells": {}}
    for cell in cells:
        start = time.monotonic()
        print(f"{cell.name}: running ...", flush=True)
        def progress(test_id: str, result: Outcome, cell_name: str = cell.name) -> None:
            print(f"  {cell_name} {test_id}: {result.outcome} ({result.seconds:.0f} s, cpu {result.cpu_s:.0f} s, "
                  f"peak rss {result.peak_rss_mb:.0f} MiB)"
                  + (f"\n    {_first_lines(result.detail)[:400]}" if result.outcome == "failed" else ""), flush=True)

        ran = run_cell(cell, out_dir / "logs", files, args.match, args.test_timeout, progress)
        counts = collections.Counter(result.outcome for result in ran.results.values())
        print(f"{cell.name}: {dict(counts)}, {len(ran.skipped)} skipped by rule, "
              f"{time.monotonic() - start:.0f} s", flush=True)
        record["cells"][cell.name] = {"seconds": time.monotonic() - start, "skipped": ran.skipped, "starts": ran.starts,
                                      "adapted": ran.adapted,
                                      "results": {test_id: asdict(result) for test_id, result in ran.results.items()}}
        path = Path(args.json) if args.json else out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))
    print_report(record)
    failed = any(result["outcome"] == "failed" for cell in record["cells"].values()
                 for result in cell["results"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
