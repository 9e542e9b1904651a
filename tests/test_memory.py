"""A party process's first large tensors land on pages mapped at its start (parties.memory)."""

from __future__ import annotations

import subprocess
import sys

FAULTS_OF_A_FRESH_TENSOR = """
import resource, sys, torch
from parties.memory import keep_freed_memory
keep_freed_memory(prefault=int(sys.argv[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(1 << 20, dtype=torch.int64)  # 8 MB, written: 2,048 pages of 4 KiB
y = x + 1
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(prefault: int) -> int:
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_A_FRESH_TENSOR, str(prefault)], capture_output=True,
                          text=True, check=True)
    return int(done.stdout.split()[-1])


def test_the_first_large_tensors_do_not_fault_their_pages_in() -> None:
    pages = 2 * (8 << 20) // 4096  # two 8 MB tensors
    assert _faults(0) >= pages // 2  # without the start's mapping, each fresh page is a fault
    assert _faults(128 << 20) < pages // 20
