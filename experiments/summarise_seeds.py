#!/usr/bin/env python
"""
Mean and standard deviation over seeds of every number the experiments report.

    python experiments/summarise_seeds.py table OUT/seed*/eval/*.json
        one markdown table: a row per number, a column per run name, "mean ± std (n)"; results files of
        tools/evaluate_dense.py, tools/propagate_labels.py and of the `finetune-result` command below,
        grouped by their "name" (the experiments give every seed of a run the same name)
    python experiments/summarise_seeds.py finetune-result --name vader_600 --seed 2 --output r.json RUN_DIR
        the first and last logged training loss and the final evaluation (set-level numbers, not per class)
        of a Detectron2 run (RUN_DIR/metrics.json), as a results file for `table`

The standard deviation is the sample one (n - 1 in the denominator): the spread one more seed would be
expected to show. With one seed it is left out.
"""

import argparse
import fnmatch
import statistics
from collections import defaultdict

from vader_d2.checkpoint.atomic_io import atomic_write_json
from vader_d2.cli import read_json_file, run_cli
from vader_d2.errors import UserError
from vader_d2.study.results import finetune_result

# Parts of a results file that are settings, counts or bookkeeping, not measurements.
NOT_MEASUREMENTS = {
    "seed", "seconds", "per_video", "num_pairs", "objects", "videos", "images", "IoU",
    "correspondence_protocol", "linear_probe_protocol", "label_propagation_protocol",
    "correspondence_dataset", "linear_probe_datasets", "davis", "feature_sources",
}


def measurements(result, prefix=""):
    """``{dotted path: number}`` of every measurement in a results dict."""
    found = {}
    for key, value in result.items():
        if key in NOT_MEASUREMENTS:
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(measurements(value, path + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[path] = float(value)
    return found


def format_spread(values):
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.4g} (n=1)"
    return f"{mean:.4g} ± {statistics.stdev(values):.2g} (n={len(values)})"


def seed_table(results, patterns=None):
    """Markdown: a row per measurement, a column per run name, mean ± std over that name's files."""
    by_name = defaultdict(list)
    for result in results:
        by_name[result["name"]].append(measurements(result))
    paths = []
    for runs in by_name.values():
        for run in runs:
            paths += [p for p in run if p not in paths]
    if patterns:
        paths = [p for p in paths if any(fnmatch.fnmatch(p, pattern) for pattern in patterns)]
    names = list(by_name)
    lines = ["| measurement | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for path in paths:
        cells = []
        for name in names:
            values = [run[path] for run in by_name[name] if path in run]
            cells.append(format_spread(values) if values else "-")
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load(paths):
    results = []
    for path in paths:
        result = read_json_file(path)
        if not isinstance(result, dict) or not isinstance(result.get("name"), str):
            raise UserError(f"the results file {path} has no run name (\"name\"); is it a vader_d2 results file?")
        results.append(result)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("table", help="mean ± std per run name over results files")
    table.add_argument("files", nargs="+", metavar="JSON")
    table.add_argument("--only", nargs="+", metavar="PATTERN", help="measurements whose dotted path matches (fnmatch)")
    finetune = commands.add_parser("finetune-result", help="a results file of one Detectron2 run")
    finetune.add_argument("run_dir")
    finetune.add_argument("--name", required=True)
    finetune.add_argument("--seed", type=int, required=True)
    finetune.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    if args.command == "table":
        print(seed_table(load(args.files), args.only))
    else:
        result = finetune_result(args.name, args.seed, args.run_dir)
        atomic_write_json(args.output, result, what="the results file")


if __name__ == "__main__":
    run_cli(main)
