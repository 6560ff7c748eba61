"""Voting throughput: RUEL-12 weighted voting, vectorised (minseg) vs a per-pixel Python loop.

Both vote the same random labels (9 classes, ties included) and must agree; prints
Mpix/s for each and their ratio, measured in this one run:

    python bench/voting_throughput.py [--size 1024] [--members 12] [--csv bench/results/voting_throughput.csv]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from minseg.ensemble.voting import hard_vote, rank_weights

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit  # noqa: E402


def per_pixel_vote(labels: np.ndarray, weights: list[int], num_classes: int) -> np.ndarray:
    """The paper code's approach: a Python loop over pixels."""
    out = np.zeros(labels.shape[1:], dtype=np.int64)
    members = labels.shape[0]
    for y in range(labels.shape[1]):
        for x in range(labels.shape[2]):
            scores = [0] * num_classes
            for m in range(members):
                scores[labels[m, y, x]] += weights[m]
            best = max(scores)
            for m in range(members):
                if scores[labels[m, y, x]] == best:
                    out[y, x] = labels[m, y, x]
                    break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="vectorised image side (pixels)")
    parser.add_argument("--loop-size", type=int, default=128, help="per-pixel loop image side (it is slow)")
    parser.add_argument("--members", type=int, default=12)
    parser.add_argument("--classes", type=int, default=9)
    parser.add_argument("--csv")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    weights = rank_weights(args.members)

    labels = torch.from_numpy(rng.integers(0, args.classes, (args.members, args.size, args.size)))
    hard_vote(labels[:, :64, :64], weights, args.classes)  # warm-up
    repeats, started = 0, time.perf_counter()
    while repeats < 3 or time.perf_counter() - started < 2.0:
        hard_vote(labels, weights, args.classes)
        repeats += 1
    vector_mpix = repeats * args.size**2 / (time.perf_counter() - started) / 1e6

    small = rng.integers(0, args.classes, (args.members, args.loop_size, args.loop_size))
    started = time.perf_counter()
    reference = per_pixel_vote(small, weights.tolist(), args.classes)
    loop_mpix = args.loop_size**2 / (time.perf_counter() - started) / 1e6
    agree = np.array_equal(hard_vote(torch.from_numpy(small), weights, args.classes)[0].numpy(), reference)

    row = {"date": time.strftime("%Y-%m-%d"), "members": args.members, "classes": args.classes,
           "threads": torch.get_num_threads(), "vectorised_mpix_s": round(vector_mpix, 2),
           "per_pixel_loop_mpix_s": round(loop_mpix, 5), "speedup": round(vector_mpix / loop_mpix, 1), "agree": agree}
    emit(row, args.csv)
    print(f"# RUEL-{args.members} WV: vectorised {row['vectorised_mpix_s']} Mpix/s vs per-pixel loop "
          f"{row['per_pixel_loop_mpix_s']} Mpix/s: {row['speedup']}x, identical labels: {agree}")


if __name__ == "__main__":
    main()
