#!/usr/bin/env python
"""
The tables of the in-domain low-label study (experiments/transfer_study.sh) from its results files
RESULTS/seed<s>/<task>_<budget>/<init>.json.

    python experiments/summarise_transfer.py experiments/results/transfer_study

For each task and label budget: every initialisation's headline number, mean ± sample std over the
seeds that have it; then each pretraining's gain over random init, paired by seed (the same seed drives
both downstream runs), as mean ± std of the per-seed differences. A gain counts as shown when its mean
exceeds twice that std, with at least 3 seeds.
"""

import argparse
import glob
import json
import os
import re
import statistics
from collections import defaultdict

from vader_d2.cli import run_cli
from vader_d2.errors import UserError

HEADLINE = {  # task -> the numbers of Detectron2's evaluators reported
    "semantic": ("sem_seg/mIoU",),
    "frozen": ("sem_seg/mIoU",),
    "mask_rcnn": ("segm/AP", "bbox/AP"),
}
INIT_ORDER = ("random_init", "moco_v2", "densecl", "pixpro", "vader", "vader_resnet")
MIN_SEEDS_FOR_A_CLAIM = 3


def read_results(root):
    """``{(task, budget): {init: {seed: {metric: value}}}}``"""
    found = defaultdict(lambda: defaultdict(dict))
    pattern = re.compile(r"seed(\d+)/([a-z_]+)_(\d+)/([a-z0-9_]+)\.json$")
    for path in sorted(glob.glob(os.path.join(root, "seed*", "*_*", "*.json"))):
        match = pattern.search(path.replace(os.sep, "/"))
        if not match:
            continue
        seed, task, budget, init = int(match[1]), match[2], int(match[3]), match[4]
        if task not in HEADLINE:
            continue
        with open(path) as f:
            numbers = json.load(f)["finetune"]
        found[task, budget][init][seed] = {m: numbers[m] for m in HEADLINE[task] if m in numbers}
    return found


def spread(values):
    if len(values) == 1:
        return f"{values[0]:.1f} (n=1)"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f} (n={len(values)})"


def gain(init_runs, random_runs, metric):
    """Per-seed differences to random init over the seeds both have; its cell and whether it is shown."""
    differences = [
        init_runs[s][metric] - random_runs[s][metric]
        for s in sorted(set(init_runs) & set(random_runs))
        if metric in init_runs[s] and metric in random_runs[s]
    ]
    if not differences:
        return "-", False
    if len(differences) == 1:
        return f"{differences[0]:+.1f} (n=1)", False
    mean, std = statistics.fmean(differences), statistics.stdev(differences)
    shown = len(differences) >= MIN_SEEDS_FOR_A_CLAIM and mean > 2 * std
    return f"{mean:+.1f} ± {std:.1f} (n={len(differences)})" + (" **> 2 std**" if shown else ""), shown


def tables(found):
    present = {init for runs in found.values() for init in runs}
    inits = [i for i in INIT_ORDER if i in present] + sorted(present - set(INIT_ORDER))
    pretrained = [i for i in inits if i != "random_init"]
    lines = ["| task | labels | number | " + " | ".join(inits) + " | " + " | ".join(f"{i} − random" for i in pretrained) + " |"]
    lines.append("|---|---:|---|" + "---:|" * (len(inits) + len(pretrained)))
    shown = []
    for (task, budget), runs in sorted(found.items(), key=lambda item: (list(HEADLINE).index(item[0][0]), item[0][1])):
        for metric in HEADLINE[task]:
            cells = []
            for init in inits:
                values = [numbers[metric] for numbers in runs.get(init, {}).values() if metric in numbers]
                cells.append(spread(values) if values else "-")
            for init in pretrained:
                cell, is_shown = gain(runs.get(init, {}), runs.get("random_init", {}), metric)
                cells.append(cell)
                if is_shown:
                    shown.append(f"{init} > random init on {task} {metric} with {budget} labels")
            lines.append(f"| {task} | {budget} | {metric} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Gains larger than twice the std of the per-seed difference (3 seeds or more): " + ("; ".join(shown) if shown else "none"))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", metavar="RESULTS", help="the study's results folder")
    args = parser.parse_args(argv)
    found = read_results(args.results)
    if not found:
        raise UserError(f"no results of the transfer study under {args.results} (seed<s>/<task>_<budget>/<init>.json)")
    print(tables(found))


if __name__ == "__main__":
    run_cli(main)
