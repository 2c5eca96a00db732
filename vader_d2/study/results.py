"""
A study's results folder and what is made from it.

    OUT/study.yaml, study.sha256     the declaration as it was when the first result was written
    OUT/budgets/<task>_<N>.json      the images of each label budget (a ``subset:`` dataset file)
    OUT/calibration.json             seconds per pretraining step of each method (equal_time_as)
    OUT/seed<s>/<task>_<N>/<init>.json   one downstream run: its final evaluation and first/last loss
    OUT/seed<s>/pretraining/<init>.json  (or OUT/pretraining/ when pretrained once): what each got and the
                                         sha256 of its export, which each result of it names too

``table`` gives each cell's mean ± sample std over seeds and each initialisation's gain over the random
one, paired by seed (the same seed drives both downstream runs): mean ± std of the per-seed differences,
marked where the mean exceeds twice that std in size (a gain or a loss) with at least 3 seeds. ``plot``
draws those gains against the label budget. ``schedule`` reads tasks declared at several lengths and
names the shortest after which the random initialisation stops improving (docs/transfer.md, "How long
must the downstream runs be?").
"""

import hashlib
import json
import math
import os
import statistics

from ..errors import UserError, read_json_file

__all__ = [
    "MIN_SEEDS_FOR_A_CLAIM",
    "result_path",
    "read_result",
    "made_result",
    "finetune_result",
    "file_sha256",
    "collect",
    "gain_table",
    "plot_gains",
    "choose_schedule",
    "schedule_table",
]

MIN_SEEDS_FOR_A_CLAIM = 3
# Keys Detectron2's COCO and semantic-segmentation evaluators write into metrics.json.
EVALUATION_PREFIXES = ("bbox/", "segm/", "keypoints/", "sem_seg/")
# The training numbers of a result, beside its evaluation's: its first and last logged total loss.
LOSS_KEYS = ("loss_first_record", "loss_last_record")
# The headline numbers of a task whose declaration names none: the first of these its results hold.
HEADLINE_CHOICES = (("sem_seg/mIoU",), ("segm/AP", "bbox/AP"), ("keypoints/AP", "bbox/AP"), ("bbox/AP",))


def result_path(out, seed, task, budget, init):
    return os.path.join(out, f"seed{seed}", f"{task}_{budget}", f"{init}.json")


def pretraining_record_path(study, out, init, seed):
    """OUT's record of ``init``'s pretraining (its length and the images it saw): one a seed, or one for
    every seed where the study pretrains once."""
    if study.pretrain_per_seed:
        return os.path.join(out, f"seed{seed}", "pretraining", f"{init}.json")
    return os.path.join(out, "pretraining", f"{init}.json")


def read_result(path, **place):
    """A downstream result (``finetune_result``): its ``finetune`` numbers, checked, and made by the run
    that its ``place`` in OUT names (``name``, ``seed``, ``task``, ``budget``)."""
    result = read_json_file(path)
    numbers = result.get("finetune") if isinstance(result, dict) else None
    if not isinstance(numbers, dict) or not all(isinstance(v, (int, float)) for v in numbers.values()):
        raise UserError(f"the results file {path} holds no 'finetune' numbers; delete it so that its run is made again")
    for key, value in numbers.items():
        # true is an int to Python (it would count as 1.0); NaN stays: Detectron2's AP when nothing was detected.
        if isinstance(value, bool) or isinstance(value, float) and math.isinf(value):
            raise UserError(f"the results file {path} holds {json.dumps(value)} for {key!r}, which no evaluation gives; "
                            "delete it so that its run is made again")
    # Results of earlier scripts hold no task or budget: only the fields a result holds can be compared.
    for field, expected in place.items():
        if field in result and result[field] != expected:
            raise UserError(f"the results file {path} is the result of {field} {result[field]!r}, not of {field} {expected!r} "
                            "as its place in the folder says (copied from another run?); delete it so that its run is made again")
    return result


def made_result(out, seed, task, budget, init):
    """The result of one run of a study's grid in OUT (``read_result``, checked against its place), or None
    where that run is not made yet."""
    path = result_path(out, seed, task, budget, init)
    if not os.path.exists(path):
        return None
    return read_result(path, name=init, seed=seed, task=task, budget=budget)


def finetune_result(name, seed, run_dir, final_iteration=None, **extra):
    """A results dict of one Detectron2 training run: first and last logged total loss, final evaluation
    (with ``final_iteration``, one made at that iteration: not an earlier periodic one)."""
    from ..evaluation.report import read_metrics

    metrics = read_metrics(os.path.join(run_dir, "metrics.json"))
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    # An evaluation shares its record with the training scalars of the same iteration.
    evaluations = [m for m in metrics if any(k.startswith(EVALUATION_PREFIXES) for k in m)]
    if not losses or not evaluations:
        raise UserError(f"{run_dir}/metrics.json has no training loss or no evaluation: did the run finish?")
    if final_iteration is not None and evaluations[-1].get("iteration") != final_iteration:
        raise UserError(f"{run_dir}/metrics.json has no evaluation at iteration {final_iteration}: did the run finish?")
    # The set-level numbers; per-class ones ("bbox/AP-bird", "sem_seg/IoU-fish") carry a "-class" suffix.
    final = {k: v for k, v in evaluations[-1].items() if k.startswith(EVALUATION_PREFIXES) and "-" not in k.split("/", 1)[1]}
    first_loss, last_loss = LOSS_KEYS
    return {
        "name": name, "seed": seed, "run_dir": run_dir,
        "finetune": {first_loss: losses[0], last_loss: losses[-1], **final},
        **extra,
    }


def file_sha256(path):
    """The sha256 of a file's bytes: which pretrained model a result was made with, which image is which."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def collect(study, out):
    """``{(task, budget): {init: {seed: finetune numbers}}}`` of the results ``out`` holds for the grid."""
    found = {}
    for task in study.tasks:
        for budget in study.label_budgets:
            for init in study.initialisations:
                for seed in study.seeds:
                    result = made_result(out, seed, task, budget, init)
                    if result is not None:
                        found.setdefault((task, budget), {}).setdefault(init, {})[seed] = result["finetune"]
    return found


def headline(study, task, runs):
    """The numbers shown of ``task`` with the results ``runs`` (``{key: {seed: numbers}}``): the declared
    ones, or those HEADLINE_CHOICES finds. A declared one that no result holds while they hold others of
    its evaluation (sem_seg/, segm/, ...) is a misspelling: a row of ``-`` would pass for missing runs.
    None of its evaluation is no misspelling: Detectron2's COCO evaluation writes no segm/ numbers for a
    model that detected nothing."""
    held = {metric for by_seed in runs.values() for numbers in by_seed.values() for metric in numbers}
    declared = study.tasks[task].metrics
    if declared:
        kinds = {metric.split("/", 1)[0] for metric in held if "/" in metric}
        absent = [metric for metric in declared if metric not in held and (metric.split("/", 1)[0] in kinds or "/" not in metric)]
        if held and absent:
            raise UserError(f"no result of task {task} holds {absent[0]} (they hold: {', '.join(sorted(held))}), "
                            f"which tasks.{task}.metrics of {study.path} names")
        return declared
    for choice in HEADLINE_CHOICES:
        if choice[0] in held:
            return tuple(metric for metric in choice if metric in held)
    return ()


def paired_gain(init_runs, reference_runs, metric):
    """The per-seed differences to the reference over the seeds both have."""
    return [
        init_runs[s][metric] - reference_runs[s][metric]
        for s in sorted(set(init_runs) & set(reference_runs))
        if metric in init_runs[s] and metric in reference_runs[s]
    ]


def shown_direction(differences):
    """+1 for a gain, -1 for a loss, where the mean of the per-seed differences exceeds twice their std
    in size with at least MIN_SEEDS_FOR_A_CLAIM seeds; 0 where the seeds do not settle it."""
    if len(differences) < MIN_SEEDS_FOR_A_CLAIM or any(math.isnan(d) for d in differences):
        return 0
    mean = statistics.fmean(differences)
    return int(math.copysign(1, mean)) if abs(mean) > 2 * statistics.stdev(differences) else 0


def _mean_and_std(values):
    """Mean and sample std; NaN (Detectron2's AP of a model that detected nothing) makes both NaN."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values)


def _spread(values):
    if len(values) == 1:
        return f"{values[0]:.1f} (n=1)"
    mean, std = _mean_and_std(values)
    return f"{mean:.1f} ± {std:.1f} (n={len(values)})"


def _gain_cell(differences):
    if not differences:
        return "-"
    if len(differences) == 1:
        return f"{differences[0]:+.1f} (n=1)"
    mean, std = _mean_and_std(differences)
    marker = {1: " **> 2 std**", -1: " **< −2 std**", 0: ""}[shown_direction(differences)]
    return f"{mean:+.1f} ± {std:.1f} (n={len(differences)})" + marker


def gain_table(study, found):
    """Markdown: a row per task, budget and headline number; a column per initialisation, then each
    one's paired gain over the random initialisation; and the gains and losses shown by the 2 std rule."""
    present = {init for runs in found.values() for init in runs}
    inits = [init for init in study.initialisations if init in present]
    reference = study.reference
    compared = [init for init in inits if init != reference] if reference else []
    header = ["task", "labels", "number", *inits, *(f"{i} − random" for i in compared)]
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|---|---:|---|" + "---:|" * (len(inits) + len(compared)))
    shown = {1: [], -1: []}
    for (task, budget), runs in found.items():
        for metric in headline(study, task, runs):
            cells = []
            for init in inits:
                values = [numbers[metric] for numbers in runs.get(init, {}).values() if metric in numbers]
                cells.append(_spread(values) if values else "-")
            for init in compared:
                differences = paired_gain(runs.get(init, {}), runs.get(reference, {}), metric)
                cells.append(_gain_cell(differences))
                direction = shown_direction(differences)
                if direction:
                    shown[direction].append(f"{init} {'>' if direction > 0 else '<'} random init on {task} {metric} with {budget} labels")
            lines.append(f"| {task} | {budget} | {metric} | " + " | ".join(cells) + " |")
    lines.append("")
    for direction, kind in ((1, "Gains"), (-1, "Losses")):
        lines.append(f"{kind} larger than twice the std of the per-seed difference (3 seeds or more): " + ("; ".join(shown[direction]) or "none"))
    return "\n".join(lines)


def plot_gains(study, found, output):
    """An image, in the format of ``output``'s suffix: one panel per task and headline number, each
    initialisation's paired gain over the random one against the label budget (mean, error bar one std
    of the per-seed differences; a filled marker where the 2 std rule shows a gain or a loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backend_bases import FigureCanvasBase

    # matplotlib appends .png to a name without a suffix, writing elsewhere than asked, and refuses one it
    # does not know only once the figure is drawn.
    formats = FigureCanvasBase.get_supported_filetypes()
    if not output:
        raise UserError("plot --output is empty; give a file name, e.g. gains.png")
    if os.path.isdir(output):
        raise UserError(f"plot --output {output} is a folder; give a file name in it, e.g. {os.path.join(output, 'gains.png')}")
    if os.path.splitext(output)[1][1:].lower() not in formats:
        raise UserError(f"plot --output {output} does not end in a suffix matplotlib writes ({', '.join('.' + f for f in sorted(formats))}); "
                        "give e.g. gains.png")

    reference = study.reference
    if reference is None:
        raise UserError(f"{study.path} declares no random: true initialisation, so there are no gains to plot")
    panels = []
    for task in study.tasks:
        runs_of_task = {budget: runs for (t, budget), runs in found.items() if t == task}
        every_run = {(init, budget): by_seed for budget, runs in runs_of_task.items() for init, by_seed in runs.items()}
        for metric in headline(study, task, every_run):
            panels.append((task, metric, runs_of_task))
    if not panels:
        raise UserError("no results to plot yet")
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    compared = [init for init in study.initialisations if init != reference]
    for axis, (task, metric, runs_of_task) in zip(axes[0], panels):
        drawn = [init for init in compared if any(init in runs for runs in runs_of_task.values())]
        for index, init in enumerate(compared):
            budgets, means, stds, shown = [], [], [], []
            for budget in sorted(runs_of_task):
                runs = runs_of_task[budget]
                differences = paired_gain(runs.get(init, {}), runs.get(reference, {}), metric)
                if not differences:
                    continue
                mean, std = _mean_and_std(differences) if len(differences) > 1 else (differences[0], 0.0)
                if math.isnan(mean):  # Detectron2's AP when nothing was detected: no point to draw
                    continue
                budgets.append(budget)
                means.append(mean)
                stds.append(std)
                shown.append(shown_direction(differences) != 0)
            if not budgets:
                continue
            color = f"C{index % 10}"
            xs = [dodged(budget, drawn.index(init), len(drawn)) for budget in budgets]
            axis.errorbar(xs, means, yerr=stds, color=color, capsize=3, label=init)
            for x, mean, filled in zip(xs, means, shown):
                axis.plot(x, mean, "o", color=color, markerfacecolor=color if filled else "white")
        axis.axhline(0.0, color="black", linewidth=0.8)
        if not axis.lines[:-1]:
            axis.text(0.5, 0.6, "no finite gain yet", ha="center", transform=axis.transAxes)
        axis.set_xlim(min(study.label_budgets) / 1.5, max(study.label_budgets) * 1.5)
        axis.set_xscale("log")
        axis.set_xticks(study.label_budgets)
        axis.set_xticklabels([str(b) for b in study.label_budgets])
        axis.minorticks_off()  # a log axis would label 2x10^1 and 4x10^1 beside the budgets
        axis.set_xlabel("labelled images")
        axis.set_ylabel(f"{metric} − {reference}")
        axis.set_title(f"{task}: gain over {reference}")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    figure.suptitle(f"{study.description or os.path.basename(study.path)} (filled: gain or loss > 2 std of the per-seed difference, 3+ seeds)", fontsize="small")
    figure.tight_layout()
    try:
        figure.savefig(output, dpi=100)
    except OSError as e:
        raise UserError(f"cannot write the plot {output}: {e.strerror or e}") from None
    except RuntimeError as e:  # a format that needs a program not installed: .pgf needs LaTeX
        raise UserError(f"cannot write the plot {output}: {e}; give a .png file") from None
    finally:
        plt.close(figure)
    return output


def dodged(budget, index, count, spread=0.08):
    """Where the ``index``-th of ``count`` initialisations draws its point at ``budget`` on the log axis:
    side by side within ``spread`` decades, centred on the budget, so error bars at one budget do not hide
    each other."""
    if count < 2:
        return budget
    return budget * 10 ** (spread * (index / (count - 1) - 0.5))


def _schedule_families(study):
    """Tasks that differ only in their declared ``iterations`` (the same config, data, ``frozen`` and
    overrides; the numbers shown may differ), each family shortest first. A schedule in epochs is left
    out: its floor (``min_iterations``) can make two declared lengths one run; so is one per budget, which
    has no one length to order the family by."""
    families = {}
    for task in study.tasks.values():
        if task.schedule.iterations:
            families.setdefault(task.trains_like, []).append(task)
    # No two tasks are one run (declaration.py refuses them), so the lengths of a family differ.
    return [sorted(tasks, key=lambda task: task.schedule.iterations) for tasks in families.values() if len(tasks) > 1]


def choose_schedule(runs_by_length, seeds, labels):
    """The shortest length after which the next one rises the mean by less than the sample std over
    seeds at the first (the last length if none does): ``(index, why)``, or ``(None, what is missing)``.
    ``runs_by_length`` lists ``{seed: value}`` per length (named by ``labels``), shortest first; every
    declared seed is needed at both lengths of a step before the step decides anything."""
    if len(seeds) < 2:
        return None, "the std over seeds needs 2 seeds or more"
    for index in range(len(runs_by_length) - 1):
        missing = [f"seed {', '.join(str(s) for s in seeds if s not in runs_by_length[k])} at {labels[k]}"
                   for k in (index, index + 1) if not set(seeds) <= set(runs_by_length[k])]
        if missing:
            return None, f"not yet: needs {'; '.join(missing)}"
        here, there = runs_by_length[index], runs_by_length[index + 1]
        undefined = [f"seed {s} at {labels[k]}" for k, runs in ((index, here), (index + 1, there)) for s in seeds if math.isnan(runs[s])]
        if undefined:
            return None, f"none: NaN for {', '.join(undefined)} (nothing detected?)"
        values = [here[s] for s in seeds]
        rise = statistics.fmean(there[s] for s in seeds) - statistics.fmean(values)
        std = statistics.stdev(values)
        if rise < std:
            return index, f"next rises {rise:+.1f} < std {std:.1f}"
    return len(runs_by_length) - 1, "every step rose by the std or more: still rising at the longest declared"


def _declared_schedule(iterations_by_budget):
    """The study file's ``schedule:`` value running each budget for its iterations."""
    if len(set(iterations_by_budget.values())) == 1:
        return f"{{iterations: {next(iter(iterations_by_budget.values()))}}}"
    each = ", ".join(f"{budget}: {{iterations: {n}}}" for budget, n in sorted(iterations_by_budget.items()))
    return f"{{per_budget: {{{each}}}}}"


def schedule_table(study, found, init=None):
    """Markdown, for each family of tasks that differ only in their schedule: the initialisation's (the
    random one by default) mean ± std over seeds at each length, the rise from the length before, and
    the schedule the convergence rule chooses per label budget (``choose_schedule``), on the shortest
    task's first headline number."""
    init = init or study.reference
    if init is None:
        raise UserError(f"{study.path} declares no random: true initialisation; name one with --init")
    if init not in study.initialisations:
        raise UserError(f"--init {init}: not declared in {study.path} (declared: {' '.join(study.initialisations)})")
    families = _schedule_families(study)
    if not families:
        raise UserError(f"{study.path} declares no tasks that differ only in their schedule {{iterations: N}} "
                        "(the same config, data, frozen and overrides); declare one task at several lengths to choose one")
    runs_of = {(task.name, budget): found.get((task.name, budget), {}).get(init, {})
               for tasks in families for task in tasks for budget in study.label_budgets}
    if not any(runs_of.values()):
        raise UserError(f"no result of {init} yet for the tasks declared at several lengths")
    sections = []
    for tasks in families:
        metrics = headline(study, tasks[0].name, {(task.name, budget): runs_of[task.name, budget] for task in tasks for budget in study.label_budgets})
        names = ", ".join(task.name for task in tasks)
        if not metrics:
            sections.append(f"{names}: no result of {init} yet")
            continue
        metric = metrics[0]
        labels = [f"{task.schedule.iterations} iterations" for task in tasks]
        lines = [f"{names}: {init}, {metric}, seeds {', '.join(map(str, study.seeds))}", ""]
        lines.append("| labels | " + " | ".join(labels) + " | chosen |")
        lines.append("|---:|" + "---:|" * len(tasks) + "---|")
        chosen_iterations, still_rising = {}, []
        for budget in study.label_budgets:
            runs_by_length = [
                {seed: numbers[metric] for seed, numbers in runs_of[task.name, budget].items() if metric in numbers}
                for task in tasks
            ]
            cells = []
            for index, runs in enumerate(runs_by_length):
                if not runs:
                    cells.append("-")
                    continue
                cell = _spread(list(runs.values()))
                previous = runs_by_length[index - 1] if index else {}
                shared = sorted(set(runs) & set(previous))
                if shared:
                    cell += f", {statistics.fmean(runs[s] for s in shared) - statistics.fmean(previous[s] for s in shared):+.1f}"
                cells.append(cell)
            chosen, why = choose_schedule(runs_by_length, study.seeds, labels)
            verdict = f"**{labels[chosen]}** ({why})" if chosen is not None else why
            lines.append(f"| {budget} | " + " | ".join(cells) + f" | {verdict} |")
            if chosen is not None:
                chosen_iterations[budget] = tasks[chosen].schedule.iterations
                if chosen == len(tasks) - 1:  # the rule's fallback: nothing declared was long enough
                    still_rising.append(budget)
        if still_rising:
            lines += ["", f"Still rising at the longest length declared with {', '.join(map(str, still_rising))} labels: "
                          "declare longer lengths before comparing initialisations at one."]
        elif len(chosen_iterations) == len(study.label_budgets):
            lines += ["", f"To compare every initialisation at it, declare the task with `schedule: {_declared_schedule(chosen_iterations)}`."]
        sections.append("\n".join(lines))
    lines = ["\n\n".join(sections), "",
             "Each cell: mean ± sample std over seeds, then the rise of the mean from the length before (over the seeds "
             "both have). Chosen: the shortest length after which the next one rises the mean by less than the std "
             "over seeds at it; the longest if none."]
    return "\n".join(lines)
