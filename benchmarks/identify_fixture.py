"""Identification time on Zhang et al.'s (AAAI-26) released statistics (loading excluded).

Run: ``python benchmarks/identify_fixture.py [--fixtures ../shared/fixtures] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import tl_multilingual as tlm

LANGS = "en ru es fr de zh ja bn th sw".split()
TAG = "Mistral-de76d14562b1da1ba0e52d5b245cf9c0859e2af3"


def main() -> None:
    parser = argparse.ArgumentParser()
    default = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
    parser.add_argument("--fixtures", type=Path, default=default)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = args.fixtures / "njunlp_mistral_mgsm"
    stats = tlm.ActivationStats.from_reference_files(
        full={lang: folder / f"activation.{lang}.{TAG}.pt" for lang in LANGS},
        prefix={lang: folder / f"prefix.activation.{lang}.{TAG}.pt" for lang in LANGS},
    )
    for label, kwargs in (("ternary, lambda sweep", {"method": "ternary"}),
                          ("ternary, fixed lambda", {"method": "ternary", "lam": 0.109375}),
                          ("lape", {"method": "lape"})):
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            neurons = tlm.identify(stats, **kwargs)
            runs.append(time.perf_counter() - start)
        print(f"{label:24s}: median {statistics.median(runs) * 1000:7.1f} ms, "
              f"min {min(runs) * 1000:7.1f} ms  ({neurons!r})")


if __name__ == "__main__":
    main()
