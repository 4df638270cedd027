"""The conditioning encoder's first layer, direct vs factored (featinv.diffusion.encoder), forward and
backward, at the demo's shape and the paper's: seconds per call and the ratio, interleaved in one run.

    python benchmarks/encoder.py [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from featinv.diffusion.encoder import FeatureConditioningEncoder

SHAPES = {  # name: (batch, channels, map, grid, hidden)
    "demo (lite0 1280x7x7 -> 16, hidden 64)": (16, 1280, 7, 16, 64),
    "paper (ConvNeXt 1024x9x9 -> 32, hidden 512)": (4, 1024, 9, 32, 512),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name, (b, c, m, grid, hidden) in SHAPES.items():
        encs = {way: FeatureConditioningEncoder(c, (m, m), grid, hidden=hidden, depth=2, out_channels=64,
                                                first_layer=way) for way in ("direct", "factored")}
        encs["factored"].load_state_dict(encs["direct"].state_dict())
        cond = torch.randn(b, c, m, m)
        times = {way: [] for way in encs}
        for _ in range(args.repeats + 1):  # the first round warms up
            for way, enc in encs.items():
                start = time.perf_counter()
                enc(cond).square().mean().backward()
                times[way].append(time.perf_counter() - start)
        best = {way: min(t[1:]) for way, t in times.items()}
        print(f"{name}, batch {b}, {args.threads} thread(s), forward+backward: direct {best['direct']:.4f} s, "
              f"factored {best['factored']:.4f} s, direct/factored {best['direct'] / best['factored']:.2f}x")


if __name__ == "__main__":
    main()
