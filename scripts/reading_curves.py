"""The README's pretraining figure: the reading curves of several `nanobias pretrain` folders in one plot.

    python scripts/reading_curves.py DIR [DIR ...] --out docs/reading_curves.png

Each folder's policy.metrics.jsonl must hold the reading evaluations (pretrain.eval_prompts > 0).
"""

import argparse
from pathlib import Path

from nanobias.plots import reading_curves
from nanobias.train import read_metrics

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("runs", nargs="+", type=Path, help="pretraining folders (each with policy.metrics.jsonl)")
parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
args = parser.parse_args()
reading_curves({run.name: read_metrics(run / "policy.metrics.jsonl") for run in args.runs}, args.out)
print(f"wrote {args.out}")
