"""PRG throughput: the cipher generators (AES-128-CTR, ChaCha20) against torch's MT19937.

    .venv/bin/python bench/prg_bench.py [--mb 64] [--repeat 5]

Prints MB/s of uniform int64 ring elements for each generator and the ratio to torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from protocols.prg import CipherGenerator, new_seed  # noqa: E402


def _rate(draw, elements: int, repeat: int) -> float:
    draw(1024)  # warm up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        draw(elements)
        best = min(best, time.perf_counter() - start)
    return elements * 8 / best / 1e6


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=64.0, help="megabytes per draw")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    elements = int(args.mb * 1e6 / 8)
    generator = torch.Generator().manual_seed(1)
    rates = {"torch_mt19937": _rate(
        lambda n: torch.randint(-(2**63), 2**63 - 1, (n,), generator=generator, dtype=torch.long),
        elements, args.repeat)}
    for algorithm in ("aes_ctr", "chacha20"):
        cipher = CipherGenerator(new_seed(), algorithm)
        rates[algorithm] = _rate(lambda n: cipher.ring((n,)), elements, args.repeat)
    for name, rate in rates.items():
        print(f"{name:<14} {rate:9.1f} MB/s   x{rate / rates['torch_mt19937']:.2f} vs torch")
    return rates


if __name__ == "__main__":
    main()
