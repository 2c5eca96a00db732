"""Markdown tables for the results of one or several ``tools/evaluate_dense.py`` / ``tools/propagate_labels.py`` runs,
and the records of a training run's ``metrics.json``."""

import json
from typing import Dict, List, Sequence

from ..errors import UserError, read_text_file

__all__ = ["format_results_table", "format_propagation_table", "read_results_files", "read_metrics"]


def _cell(value, percent=True):
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if percent else f"{value:.2f}"


def format_results_table(results: Sequence[Dict]) -> str:
    """
    A row per (model, feature source): PCK at each threshold (%), mean / median error (pixels), mean
    cosine similarity of the cells of a view, and linear-probe mIoU (%); then the reference rows every model shares (quantisation ceiling, chance).
    """
    thresholds = results[0]["correspondence_protocol"]["thresholds"]
    header = ["model", "features", *(f"PCK@{t:g}px" for t in thresholds), "mean err px", "median err px", "within-view sim", "probe mIoU"]
    rows = []
    for result in results:
        correspondence = result.get("correspondence", {})
        probe = result.get("linear_probe", {})
        for source in result["feature_sources"]:
            c = correspondence.get(source, {})
            rows.append(
                [
                    result["name"],
                    source,
                    *(_cell(c.get(f"pck@{t:g}")) for t in thresholds),
                    _cell(c.get("mean_error_px"), percent=False),
                    _cell(c.get("median_error_px"), percent=False),
                    _cell(c.get("within_view_similarity"), percent=False),
                    _cell(probe.get(source, {}).get("mIoU")),
                ]
            )
    first = results[0]
    ceiling = first.get("correspondence", {}).get("quantisation_ceiling", {})
    rows.append(
        [
            "(best cell-level match)",
            "-",
            *(_cell(ceiling.get(f"pck@{t:g}")) for t in thresholds),
            _cell(ceiling.get("mean_error_px"), percent=False),
            _cell(ceiling.get("median_error_px"), percent=False),
            "-",
            "-",
        ]
    )
    chance = first.get("linear_probe", {}).get("chance", {})
    rows.append(["(majority class)", "-", *("-" for _ in thresholds), "-", "-", "-", _cell(chance.get("mIoU"))])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_propagation_table(results: Sequence[Dict]) -> str:
    """
    A row per (model, feature source): DAVIS J&F, J and F (%) over every object, and the numbers of
    objects and videos; then the protocol's ceiling (the true masks propagated) when it was measured.
    """
    header = ["model", "features", "J&F", "J", "F", "objects", "videos"]
    rows = []

    def row(name, source, scores):
        return [name, source, *(_cell(scores[k]) for k in ("J&F", "J", "F")), str(scores["objects"]), str(scores["videos"])]

    for result in results:
        for source, scores in result["label_propagation"].items():
            rows.append(row(result["name"], source, scores))
    # The ceiling depends on the videos alone: any run that measured it (not every run does: --no-oracle).
    ceiling = next((r["label_propagation_ceiling"] for r in results if r.get("label_propagation_ceiling")), None)
    if ceiling:
        rows.append(row("(true masks propagated)", "-", ceiling))
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def read_results_files(paths: Sequence[str], holding: str, kind: str) -> List[Dict]:
    """
    The results JSON files an evaluation tool wrote with --output (for its --table and --beside), each of
    which must hold the key ``holding`` (its ``kind`` of results); one line for a file that cannot be read
    or that another tool wrote.
    """
    results = []
    for path in paths:
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read results file {path!r}: {e}") from None
        if not isinstance(result, dict) or holding not in result:
            raise UserError(f"results file {path!r} holds no {kind} results (written by another tool?)")
        results.append(result)
    return results


def read_metrics(path):
    """The records of a ``metrics.json`` Detectron2's JSONWriter wrote (one dict per logging step); a
    missing or unreadable file, or a line that is not a JSON record, is one line naming it."""
    records = []
    for number, line in enumerate(read_text_file(path, "metrics file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise UserError(f"{path} line {number} is not a JSON record (a truncated write?)") from None
        if not isinstance(record, dict):
            raise UserError(f"{path} line {number} is not a JSON record")
        records.append(record)
    return records
