"""Time of the exact four-stage segmentation at 32, 80 and 126 layers.

For each layer count, features ``[L, 5]`` (two neuron features, three lens features)
are drawn at random, and the segmentation with all three of Zhang et al.'s (AAAI-26) signatures is
timed for ``--refits`` refits (the stability bootstrap of ``map_stages``), by dynamic
programming (``segment``) and by the exhaustive ``O(L^3)`` search it replaces
(``_exhaustive``, timed on fewer refits and scaled). Random features break the
signatures often, so this is near the worst case of the constrained search. The
fit-quality nulls (layer shuffles, batched dynamic programming) are timed too.

Run: ``python benchmarks/stage_segmentation.py [--refits 200] [--exhaustive-refits 3]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tl_multilingual.stages.segmentation import _exhaustive, _quality, segment

SIGNATURES = [(0, "min_second"), (1, "max_last"), (2, "max_last")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--refits", type=int, default=200)
    parser.add_argument("--exhaustive-refits", type=int, default=3)
    parser.add_argument("--null", type=int, default=1000, help="null draws per p-value")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"| layers | DP, {args.refits} refits (s) | exhaustive, {args.refits} refits (s, scaled) | "
          f"fit quality, {args.null} nulls x 3 (s) | same boundaries |")
    print("|---|---|---|---|---|")
    for n_layers in (32, 80, 126):
        features = [rng.standard_normal((n_layers, 5)) for _ in range(args.refits)]
        start = time.perf_counter()
        fast = [segment(x, SIGNATURES) for x in features]
        dp = time.perf_counter() - start
        start = time.perf_counter()
        slow = [_exhaustive(x, SIGNATURES) for x in features[: args.exhaustive_refits]]
        exhaustive = (time.perf_counter() - start) / args.exhaustive_refits * args.refits
        start = time.perf_counter()
        _quality(features[0], fast[0][0], args.null, 0)
        quality = time.perf_counter() - start
        same = fast[: args.exhaustive_refits] == slow
        print(f"| {n_layers} | {dp:.2f} | {exhaustive:.1f} | {quality:.2f} | {same} |")


if __name__ == "__main__":
    main()
