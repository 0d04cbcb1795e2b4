"""``scale-plugins schedule``: the segment weights over training, as a table and optionally a plot."""

from __future__ import annotations

import argparse
import sys

from ..core import progress, segment_weights
from .args import options_from


def main(args: argparse.Namespace) -> int:
    """Print the weights at evenly spaced optimizer steps; ``--plot``: every step's weights as a PNG."""
    options = options_from(args)
    names = options.segment_names
    last = args.max_steps - 1  # global_step of the last optimizer step (docs/concepts.md: how progress is counted)
    rows = sorted({round(i * last / max(args.rows - 1, 1)) for i in range(args.rows)})
    print(f"{'step':>8} {'progress':>9} " + " ".join(f"{n + '_weight':>16}" for n in names))
    for step in rows:
        ws = segment_weights(step, args.max_steps, options)
        print(f"{step:>8} {progress(step, args.max_steps):>9.3f} " + " ".join(f"{w:>16.4f}" for w in ws))
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
            return 0
        steps = list(range(args.max_steps))
        curves = list(zip(*(segment_weights(s, args.max_steps, options) for s in steps)))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, curve in zip(names, curves):
            ax.plot(steps, curve, label=f"{name} weight")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("weight")
        ax.set_title(f"SCALe {options.schedule} schedule")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")
    return 0
