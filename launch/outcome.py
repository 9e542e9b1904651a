"""What the command leaves once its parties have stopped: the whole command's wall time added
to ``summary.json``, or, when the run failed, ``summary.json`` with ``status: failed``, the
launcher's reason and each party's own reason (read from its ``party.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from parties.outputs import write_json
from parties.summary import failed_summary
from mpc.tolerance import out_of_tolerance

# the exit code of a run that finished but whose secure metrics are out of tolerance
OUT_OF_TOLERANCE_EXIT = 3


def _summary_path(output_dir: str, run_id: str) -> Path:
    return Path(output_dir) / run_id / "summary.json"


def record_success(output_dir: str, run_id: str, command_s: float) -> int:
    """Add the command's wall time; return the exit code (``OUT_OF_TOLERANCE_EXIT`` when any
    metric is outside the tolerance derived from the fixed-point precision)."""
    path = _summary_path(output_dir, run_id)
    if not path.is_file():  # the evaluator runs elsewhere (mpirun across hosts): nothing to add
        return 0
    summary = json.loads(path.read_text())
    summary["command_wall_s"] = command_s
    write_json(path, summary)
    print(f"  command wall time {command_s:.1f} s (job {summary['job_wall_s']:.1f} s); "
          f"summary in {path}", flush=True)
    failing = out_of_tolerance(summary.get("gaps"))
    if failing:
        print(f"cotrain: the secure {', '.join(failing)} lie outside the fixed-point tolerance "
              f"(exit code {OUT_OF_TOLERANCE_EXIT})", flush=True)
        return OUT_OF_TOLERANCE_EXIT
    return 0


def record_failure(output_dir: str, run_id: str, reason: str, command_s: float) -> None:
    """``summary.json`` with ``status: failed``: the launcher's reason and every party's own."""
    root = Path(output_dir) / run_id
    reasons = {}
    for report in sorted(root.glob("*/party.json")):
        try:
            party = json.loads(report.read_text())
        except ValueError:
            continue
        if party.get("status") == "failed":
            reasons[party["name"]] = party["reason"]
    root.mkdir(parents=True, exist_ok=True)
    write_json(_summary_path(output_dir, run_id),
               {**failed_summary(run_id, reason, reasons), "command_wall_s": command_s})
