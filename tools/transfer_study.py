#!/usr/bin/env python
"""
Does pretraining on my unlabeled images make my Detectron2 model better, and with which method? A study
declared in one YAML file (vader_d2/study/declaration.py; docs/transfer.md has a walkthrough), run a seed
at a time, resumable, with its table and plot.

    python tools/transfer_study.py check STUDY.yaml OUT     # every check, and the runs it would make
    python tools/transfer_study.py run STUDY.yaml OUT [--seeds 1] [--tasks frozen] [--budgets 30] [--inits vader]
    python tools/transfer_study.py table OUT                # mean ± std per cell, paired gains, 2 std marks either way
    python tools/transfer_study.py plot OUT --output OUT/gains.png
    python tools/transfer_study.py schedule OUT [--init NAME]  # tasks declared at several lengths: which suffices

OUT holds what is worth keeping (results, label budgets, calibration, the declaration); checkpoints and
logs go to --work-dir (default OUT/work, which OUT/.gitignore leaves out). A killed run continues with
the same command; a finished run is never repeated; results are only added under the study file they
were begun with (a changed grid is a new study file and a new OUT).
"""

import argparse
import os
import sys

from vader_d2.cli import check_output_dir, run_cli
from vader_d2.errors import UserError, read_text_file
from vader_d2.engine.output_dir import OutputDirLock
from vader_d2.study import collect, gain_table, load_study, parse_study, plot_gains, schedule_table

TRAIN_NET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net.py")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help in (("run", "run the study (what is missing of it)"), ("check", "check the study and list its runs; train nothing")):
        command = commands.add_parser(name, help=help)
        command.add_argument("study", metavar="STUDY.yaml")
        command.add_argument("out", metavar="OUT", help="the results folder")
        command.add_argument("--work-dir", help="checkpoints, exports and logs (default OUT/work)")
        command.add_argument("--seeds", nargs="+", type=int, help="only these declared seeds")
        command.add_argument("--tasks", nargs="+", help="only these declared tasks")
        command.add_argument("--budgets", nargs="+", type=int, help="only these declared label budgets")
        command.add_argument("--inits", nargs="+", help="only these declared initialisations")
    table = commands.add_parser("table", help="print the results table")
    table.add_argument("out", metavar="OUT")
    plot = commands.add_parser("plot", help="draw each gain against the label budget (.png, .pdf, .svg)")
    plot.add_argument("out", metavar="OUT")
    plot.add_argument("--output", required=True, help="the image to write: .png, or another suffix matplotlib writes (.pdf, .svg)")
    schedule = commands.add_parser("schedule", help="for tasks declared at several lengths: the shortest after which the random init stops improving")
    schedule.add_argument("out", metavar="OUT")
    schedule.add_argument("--init", help="whose curve decides (default: the random: true initialisation)")
    return parser.parse_args(argv)


def declared_study(out):
    """OUT/study.yaml, the declaration OUT's results were made under: its grid must be the one
    OUT/study.sha256 records, or a swapped or edited file would be reported as if the results were its."""
    from vader_d2.study.runner import holds_results, recorded_declaration

    if not os.path.isdir(out):
        raise UserError(f"{out} is not a results folder of tools/transfer_study.py (no such folder)")
    path = os.path.join(out, "study.yaml")
    recorded = recorded_declaration(out)
    if not recorded:
        if not os.path.exists(path):
            if holds_results(out):
                raise UserError(f"{out} holds results but neither study.yaml nor study.sha256, the declaration they were made "
                                f"under; restore both from where {out} is kept (git)")
            raise UserError(f"{out} holds no declared study ({path}); `run` writes it with the first result")
        raise UserError(f"{out} holds no study.sha256 recording the grid its results were made under, so {path} "
                        f"cannot be checked; restore it from where {out} is kept (git), or run "
                        f"`tools/transfer_study.py check STUDY {out}` with the study file you declared")
    digest, study_file = recorded
    declared = f"the study file you declared ({study_file})" if study_file else "the study file you declared"
    if not os.path.exists(path):
        raise UserError(f"{out} holds no study.yaml beside its study.sha256: copy {declared} to {path}, or run "
                        f"`tools/transfer_study.py check STUDY {out}`")
    study = parse_study(read_text_file(path, "declared study"), path)
    if study.digest != digest:
        raise UserError(f"{path} is not the study the results in {out} were made under (its grid's sha256 is {study.digest[:12]}, "
                        f"{os.path.join(out, 'study.sha256')} records {digest[:12]}); copy {declared} to {path}, or run "
                        f"`tools/transfer_study.py check STUDY {out}`")
    return study


def selection(study, args):
    """The declared seeds, tasks, budgets and initialisations the command line keeps."""
    chosen = []
    for option, declared in (("seeds", study.seeds), ("tasks", list(study.tasks)), ("budgets", study.label_budgets),
                             ("inits", list(study.initialisations))):
        wanted = getattr(args, option)
        unknown = [value for value in wanted or () if value not in declared]
        if unknown:
            raise UserError(f"--{option} {' '.join(map(str, unknown))}: not declared in {study.path} (declared: {' '.join(map(str, declared))})")
        chosen.append([value for value in declared if not wanted or value in wanted])
    return chosen


def run(args):
    # Imported here: what only check and run need.
    from vader_d2.study.checks import check_study
    from vader_d2.study.runner import StudyRunner, check_declaration_unchanged

    study = load_study(args.study)
    chosen = selection(study, args)
    out = check_output_dir(args.out, "the results folder OUT")
    work = os.path.abspath(args.work_dir or os.path.join(out, "work"))
    if os.path.realpath(work) == os.path.realpath(out):
        raise UserError(f"--work-dir {args.work_dir} is the results folder OUT: give the checkpoints a folder of their own (default OUT/work)")
    locks = [OutputDirLock(out, what="results folder"), OutputDirLock(check_output_dir(work, "--work-dir"), what="work folder")]
    held = []
    try:
        for lock in locks:
            lock.acquire()
            held.append(lock)
        check_declaration_unchanged(study, out)
        ignore_work_folder(out, work)
        facts = check_study(study, out)
        runner = StudyRunner(study, out, work, TRAIN_NET, facts)
        if args.command == "check":
            jobs = runner.plan(*chosen)
            for k, job in enumerate(jobs, 1):
                print(f"run {k} of {len(jobs)}: {job.what}{' (done)' if job.done else ''}")
            print(f"{study.path}: checked; {sum(not job.done for job in jobs)} of {len(jobs)} runs to make")
            return 0
        runner.run(*chosen)
        if os.path.exists(os.path.join(out, "study.yaml")):
            found = collect(study, out)
            if found:
                table = gain_table(study, found)
                with open(os.path.join(out, "table.md"), "w") as f:
                    f.write(table + "\n")
                print(table)
                try:
                    schedule = schedule_table(study, found)
                except UserError:  # no random init, no task at several lengths, or no result of them yet
                    pass
                else:
                    with open(os.path.join(out, "schedule.md"), "w") as f:
                        f.write(schedule + "\n")
        return 0
    finally:
        for lock in held:
            lock.release()


def ignore_work_folder(out, work):
    """A work folder inside OUT is listed in OUT/.gitignore: committing OUT must not commit checkpoints."""
    inside = os.path.relpath(os.path.realpath(work), os.path.realpath(out))
    if inside == os.pardir or inside.startswith(os.pardir + os.sep):
        return
    entry = inside.replace(os.sep, "/") + "/"
    path = os.path.join(out, ".gitignore")
    text = read_text_file(path, "results folder's .gitignore") if os.path.exists(path) else ""
    if not {entry, "/" + entry} & set(text.splitlines()):
        with open(path, "a") as f:
            f.write(("\n" if text and not text.endswith("\n") else "") + entry + "\n")


def main(args):
    if args.command in ("run", "check"):
        try:
            return run(args)
        except KeyboardInterrupt:  # before the runner takes the signal over: during the checks
            print("vader_d2: stopped (Ctrl-C) before any training; run the same command again", file=sys.stderr, flush=True)
            return 130
    study = declared_study(args.out)
    found = collect(study, args.out)
    if not found:
        raise UserError(f"{args.out} holds no results of {study.path} yet")
    if args.command == "table":
        print(gain_table(study, found))
    elif args.command == "schedule":
        print(schedule_table(study, found, args.init))
    else:
        print(plot_gains(study, found, args.output))
    return 0


if __name__ == "__main__":
    run_cli(main, parse_args())
