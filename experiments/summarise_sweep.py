#!/usr/bin/env python
"""
One table of a demo-recipe sweep (experiments/sweep_demo_recipe.sh): for every run, the ten numbers
`make demo` prints for the trained model (PCK@2/4/8 and median error of `head` and `p2`, J&F of both),
and how many of them beat the random initialisation's.

    python experiments/summarise_sweep.py --random OUT/random_init OUT/baseline OUT/lr0.1 ...

Each RUN stands for RUN.correspondence.json (tools/evaluate_dense.py) and RUN.propagation.json
(tools/propagate_labels.py). Runs without both files are listed as not run yet.
"""

import argparse
import os

from vader_d2.cli import read_json_file, run_cli
from vader_d2.errors import UserError

SOURCES = ("head", "p2")
THRESHOLDS = ("2", "4", "8")


def read_numbers(prefix):
    """``{(source, measure): value}`` in percent (PCK, J&F) or pixels (median error); None if not run."""
    paths = [f"{prefix}.correspondence.json", f"{prefix}.propagation.json"]
    if not all(os.path.isfile(p) for p in paths):
        return None
    numbers = {}
    try:
        correspondence = read_json_file(paths[0])["correspondence"]
        propagation = read_json_file(paths[1])["label_propagation"]
        for source in SOURCES:
            for t in THRESHOLDS:
                numbers[source, f"PCK@{t}"] = 100 * correspondence[source][f"pck@{t}"]
            numbers[source, "median px"] = correspondence[source]["median_error_px"]
            numbers[source, "J&F"] = 100 * propagation[source]["J&F"]
    except (KeyError, TypeError) as e:
        raise UserError(f"the results files {prefix}.*.json lack {e} (not written by evaluate_dense.py / propagate_labels.py?)") from None
    return numbers


def beats(measure, value, reference):
    return value < reference if measure == "median px" else value > reference


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random", required=True, metavar="PREFIX", help="the random initialisation's results")
    parser.add_argument("runs", nargs="+", metavar="PREFIX")
    args = parser.parse_args(argv)
    reference = read_numbers(args.random)
    if reference is None:
        raise UserError(f"the random initialisation's results {args.random}.*.json are missing")
    columns = list(reference)
    header = ["run", *(f"{s} {m}" for s, m in columns), "beats random"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]

    def row(name, numbers, verdict):
        cells = [f"{numbers[c]:.1f}" for c in columns]
        return "| " + " | ".join([name, *cells, verdict]) + " |"

    lines.append(row("random_init", reference, "-"))
    for prefix in args.runs:
        name = os.path.basename(prefix)
        numbers = read_numbers(prefix)
        if numbers is None:
            lines.append("| " + " | ".join([name, *("-" for _ in columns), "not run yet"]) + " |")
            continue
        wins = sum(beats(m, numbers[s, m], reference[s, m]) for s, m in columns)
        lines.append(row(name, numbers, f"{wins}/{len(columns)}"))
    print("\n".join(lines))


if __name__ == "__main__":
    run_cli(main)
