"""``cotrain audit outputs/<run id>``: check that the parties' audit logs are intact and agree."""

from __future__ import annotations

import json
from pathlib import Path

from mpc.audit import AUDIT_FILE, verify_run


def party_names(run_dir: Path) -> list[str]:
    """The run's parties: from summary.json where rank 0 wrote one, else every folder with a log."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        return [party["name"] for party in json.loads(summary.read_text())["parties"]]
    return sorted(path.parent.name for path in run_dir.glob(f"*/{AUDIT_FILE}"))


def audit(run_dir: str) -> int:
    """Print the verdict; 0 if every chain is intact and the logs agree, 1 otherwise."""
    directory = Path(run_dir)
    if not directory.is_dir():
        print(f"cotrain audit: {directory} is not a run folder")
        return 1
    parties = party_names(directory)
    if not parties:
        print(f"cotrain audit: no audit logs under {directory}")
        return 1
    report = verify_run(directory, parties)
    if report.ok:
        print(f"audit {directory}: {len(parties)} parties ({', '.join(parties)}), {report.entries} openings each; "
              "every chain is intact and the logs agree")
        return 0
    print(f"audit {directory}: FAILED")
    for problem in report.problems:
        print(f"  {problem}")
    return 1
