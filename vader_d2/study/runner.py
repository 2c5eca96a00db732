"""
Running a declared study: everything checked before the first training, then a seed at a time
(pretrainings, then that seed's downstream runs), each finished run's result written to OUT at once, so
that a run killed at any point continues where it stopped and never repeats a finished run.

What is resumed how: a pretraining continues from its last checkpoint (``train_net.py --resume``:
reproducible, not bit-equal to an uninterrupted run, docs/troubleshooting.md); an unfinished downstream run
(minutes) starts over, so that its result equals an uninterrupted run's. The heavy files (checkpoints,
exports, logs) live in the work folder, which may be lost: a seed whose results are missing is pretrained
again, and said bit-equal or not to the model its kept results came from. What OUT holds (results,
budgets, calibration, the declaration) is small and worth committing.
"""

import itertools
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

from detectron2.utils.file_io import PathManager

from ..checkpoint.atomic_io import atomic_write, atomic_write_json, short_error
from ..engine.launchers import signal_when_parent_dies
from ..engine.output_dir import OutputDirLock, delete_checkpoints, list_checkpoints
from ..errors import PREEMPTED_EXIT, USER_ERROR_EXIT, UserError, read_json_file, read_text_file
from .declaration import parse_study
from .results import file_sha256, finetune_result, made_result, pretraining_record_path, result_path

__all__ = ["StudyRunner", "check_declaration_unchanged"]

SPEED_LINE = re.compile(r"Overall training speed: \d+ iterations in \S+ \(([0-9.]+) s / it\)")


def _end_with_parent():
    """In a training process the runner starts: SIGTERM when the runner dies (even by SIGKILL), which
    train_net.py turns into a checkpoint and exit status 75 (Linux; elsewhere nothing happens)."""
    signal_when_parent_dies(signal.SIGTERM)


@dataclass
class Job:
    kind: str  # calibration, pretraining, downstream
    what: str
    run: callable
    done: bool = False
    iterations: Optional[int] = None  # its length, when known before it runs (for the ETA)
    speed_group: Optional[str] = None  # runs that take about the same time an iteration (for the ETA)


# In each run folder: the command that trains it. A folder is reused only by the same command (the same
# config, overrides and length): a changed calibration or a work folder shared by mistake retrains.
RUN_RECORD = "study_run.json"


def _run_record(config, opts, weights=""):
    """What makes a run: its config, its overrides and, for a run that loads weights, which file (its
    size and time), so that a retrained pretraining's downstream runs are trained again."""
    record = {"config": config, "opts": list(opts)}
    if weights and os.path.exists(weights):
        stat = os.stat(weights)
        record["weights_file"] = [stat.st_size, stat.st_mtime_ns]
    return record


def _same_command(run, record):
    try:
        with open(os.path.join(run, RUN_RECORD)) as f:
            return json.load(f) == record
    except (OSError, ValueError):
        return False


def recorded_declaration(out):
    """``(grid sha256, the study file's path as recorded)`` of OUT/study.sha256; None where there is none."""
    path = os.path.join(out, "study.sha256")
    if not os.path.exists(path):
        return None
    words = read_text_file(path, "declared study's sha256").split(maxsplit=1)
    if not words or not re.fullmatch("[0-9a-f]{64}", words[0]):
        raise UserError(f"{path} holds no sha256 (it should read '<sha256>  STUDY.yaml'); restore it from where "
                        f"{out} is kept (git), as it fixes the grid of the results in {out}")
    return words[0], words[1].strip() if len(words) > 1 else ""


def holds_results(out):
    """Whether OUT has a seed folder: results, or a seed's pretraining records."""
    try:
        return any(name.startswith("seed") and os.path.isdir(os.path.join(out, name)) for name in os.listdir(out))
    except OSError:
        return False


def check_declaration_unchanged(study, out):
    """Results in OUT were made under one declaration: a study file that has changed since is refused.
    OUT/study.yaml and OUT/study.sha256 are mended from the study file where one is lost (or study.yaml
    edited) and the other agrees with it: ``table`` reads them, and ``run`` writes them only with a
    first result."""
    recorded = recorded_declaration(out)
    declared = os.path.join(out, "study.yaml")
    if recorded:
        if recorded[0] != study.digest:
            raise UserError(
                f"{study.path} has changed since {out} got its first result (declared grid sha256 {recorded[0][:12]}, now "
                f"{study.digest[:12]}): a new grid is a new study file and a new results folder; "
                f"{declared} holds the declared one"
            )
        if not _declares(declared, study.digest):
            _write_declared_text(study, out)
    elif _declares(declared, study.digest):
        _write_digest(study, out)
    elif holds_results(out):
        raise UserError(f"{out} holds results but no study.sha256 recording the study they belong to; give the study another results folder")


def _declares(path, digest):
    """Whether the file ``path`` is a study file of the grid ``digest``."""
    if not os.path.isfile(path):
        return False
    try:
        return parse_study(read_text_file(path, "declared study"), path).digest == digest
    except UserError:
        return False


def record_declaration(study, out):
    """OUT/study.yaml (the file as declared) and OUT/study.sha256, written with the first result."""
    if os.path.exists(os.path.join(out, "study.sha256")):
        return
    _write_declared_text(study, out)
    _write_digest(study, out)


def _write_declared_text(study, out):
    atomic_write(os.path.join(out, "study.yaml"), lambda f: f.write(study.text.encode()), what="the declared study")


def _write_digest(study, out):
    atomic_write(os.path.join(out, "study.sha256"), lambda f: f.write(f"{study.digest}  {study.path}\n".encode()), what="the study's sha256")


class StudyRunner:
    """
    ``StudyRunner(study, out, work, train_net, facts).run(seeds, tasks, budgets, inits)``: the selected
    part of the declared grid (all of it by default). ``train_net`` is the path of tools/train_net.py,
    which every training runs in its own process; ``facts`` what ``checks.check_study`` found.
    """

    def __init__(self, study, out, work, train_net, facts):
        self.study = study
        self.out = out
        self.work = work
        self.train_net = train_net
        self.facts = facts
        self.child = None
        self.stop_signal = None

    # ---- what each initialisation's weights are -------------------------------------------------------

    def pretraining_dir(self, init, seed):
        # Beside the seed's <task>_<budget>/ downstream folders, never among them (an init may be named det_10).
        return os.path.join(self.work, f"seed{seed}" if self.study.pretrain_per_seed else "pretrained_once", "pretraining", init)

    def pretraining_seed(self, seed):
        return seed if self.study.pretrain_per_seed else self.study.seeds[0]

    def weights_of(self, init, seed):
        """The file a downstream model (or a pretraining that starts from ``init``) loads; '' for random."""
        declared = self.study.initialisations[init]
        if declared.random:
            return ""
        if declared.weights:
            return declared.weights
        return os.path.join(self.pretraining_dir(init, seed), "d2.pkl")

    # ---- lengths ---------------------------------------------------------------------------------------

    def calibration(self):
        """OUT/calibration.json: ``{"seconds_per_step": {init: s}, "iterations": {init: n}}``. The
        iterations of an equal_time_as pretraining are fixed once, when the last calibration is in, and
        kept with the results: a fresh machine resuming the study pretrains for as many. Until the
        study's first result, a calibration made under another declaration is made again."""
        path = os.path.join(self.out, "calibration.json")
        if not os.path.exists(path):
            self._refuse_a_lost_calibration(f"the calibration file {path} is missing")
            return {"seconds_per_step": {}, "iterations": {}, "study_sha256": self.study.digest}
        try:
            calibration = read_json_file(path, "calibration file")
        except UserError:
            self._refuse_a_lost_calibration(f"the calibration file {path} is damaged")
            raise
        per_step = calibration.get("seconds_per_step", {}) if isinstance(calibration, dict) else None
        iterations = calibration.get("iterations", {}) if isinstance(calibration, dict) else None
        if not (isinstance(per_step, dict) and all(isinstance(v, (int, float)) and v > 0 for v in per_step.values())
                and isinstance(iterations, dict) and all(type(v) is int and v > 0 for v in iterations.values())):
            raise UserError(
                f"the calibration file {path} is not one tools/transfer_study.py wrote; restore it (it fixes the "
                "pretraining lengths of the study's results), or delete it if the study has no result yet"
            )
        declared = os.path.exists(os.path.join(self.out, "study.sha256"))
        if not declared and calibration.get("study_sha256") != self.study.digest:
            return {"seconds_per_step": {}, "iterations": {}, "study_sha256": self.study.digest}
        return {**calibration, "seconds_per_step": per_step, "iterations": iterations}

    def _refuse_a_lost_calibration(self, problem):
        """Once a pretraining was made at a calibrated length, a new calibration would make the rest of the
        study's pretrainings at other lengths: the file is restored, not made again."""
        records = {pretraining_record_path(self.study, self.out, init, seed) for init in self.equal_time_inits() for seed in self.study.seeds}
        made = sorted(os.path.relpath(path, self.out) for path in records if os.path.exists(path))
        if made:
            raise UserError(f"{problem}, but {', '.join(made)} in {self.out} were pretrained at the lengths it fixed: "
                            "restore it from where OUT is kept (git); a new calibration would pretrain the rest at other lengths")

    def equal_time_inits(self):
        return [init for init in self.study.pretrained if self.study.length_of(init).equal_time_as]

    def needs_calibration(self):
        calibration = self.calibration()
        if all(init in calibration["iterations"] for init in self.equal_time_inits()):
            return []
        references = {self.study.length_of(init).equal_time_as for init in self.equal_time_inits()}
        return [
            init for init in self.study.pretrained
            if (init in references or init in self.equal_time_inits()) and init not in calibration["seconds_per_step"]
        ]

    def pretraining_iterations(self, init):
        length = self.study.length_of(init)
        if length.iterations:
            return length.iterations
        if length.epochs:
            return self.facts.iterations_for_epochs(init, length.epochs)
        iterations = self.calibration()["iterations"]
        if init not in iterations and not self.needs_calibration():
            # Every step time is in but the lengths were not fixed (a run killed in between): fix them now.
            self._fix_equal_time_iterations()
            iterations = self.calibration()["iterations"]
        if init not in iterations:
            raise UserError(f"{init} pretrains for the time of {length.equal_time_as}, but {self.out}/calibration.json has no iterations for it; restore that file from where OUT is kept (git), or delete it to calibrate again if no pretraining of the study was made yet")
        return iterations[init]

    def _fix_equal_time_iterations(self):
        calibration = self.calibration()
        per_step = calibration["seconds_per_step"]
        for init in self.equal_time_inits():
            length = self.study.length_of(init)
            seconds = length.fraction * self.pretraining_iterations(length.equal_time_as) * per_step[length.equal_time_as]
            calibration["iterations"][init] = max(1, round(seconds / per_step[init]))
        atomic_write_json(os.path.join(self.out, "calibration.json"), calibration, "the calibration")

    # ---- the jobs --------------------------------------------------------------------------------------

    def plan(self, seeds, tasks, budgets, inits):
        jobs = []
        shared_planned = set()
        for seed in seeds:
            # Each made result is read: a damaged one is refused now, not by the table after every run.
            missing = [
                (task, budget, init) for task, budget, init in itertools.product(tasks, budgets, inits)
                if made_result(self.out, seed, task, budget, init) is None
            ]
            needed = set()
            for _, _, init in missing:
                needed |= self._closure(init)
            for init in self.study.pretrained:
                if init not in needed or (not self.study.pretrain_per_seed and init in shared_planned):
                    continue
                shared_planned.add(init)
                try:
                    iterations = self.pretraining_iterations(init)
                except UserError:  # equal_time_as, before its calibration
                    iterations = None
                run = self.pretraining_dir(init, self.pretraining_seed(seed))
                done = iterations is not None and os.path.exists(os.path.join(run, "d2.pkl")) and _same_command(
                    run, self.pretraining_record(init, self.pretraining_seed(seed), iterations)
                )
                jobs.append(Job("pretraining", f"seed {seed}, pretraining {init}",
                                lambda init=init, seed=seed: self.pretrain(init, seed), done=done, iterations=iterations,
                                speed_group=str((self.study.initialisations[init].pretrain, self.study.initialisations[init].overrides))))
            for task, budget, init in missing:
                jobs.append(Job("downstream", f"seed {seed}, {task}, {budget} labels, {init}",
                                lambda t=task, b=budget, i=init, s=seed: self.downstream(t, b, i, s),
                                iterations=self.facts.downstream_iterations(task, budget),
                                speed_group=str(self.study.tasks[task].trains_like)))
        # Calibrated first, once and for every equal_time_as pretraining together, when one is to run.
        if any(job.kind == "pretraining" and not job.done for job in jobs):
            calibrations = [
                Job("calibration", f"calibration of {init} ({self.study.calibration_iterations} iterations)",
                    lambda init=init: self.calibrate(init), iterations=self.study.calibration_iterations)
                for init in self.needs_calibration()
            ]
            jobs = calibrations + jobs
        return jobs

    def _closure(self, init):
        found = {init}
        for dependency in self.study.initialisations[init].depends_on:
            found |= self._closure(dependency)
        return found

    def run(self, seeds, tasks, budgets, inits):
        previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
        try:
            jobs = self.plan(seeds, tasks, budgets, inits)
            total = len(jobs)
            finished = []
            for k, job in enumerate(jobs, 1):
                if job.done:
                    continue
                print(f"[transfer_study] run {k} of {total}: {job.what} ({self._eta(jobs[k - 1:], finished)})", flush=True)
                started = time.monotonic()
                job.run()
                finished.append((job, time.monotonic() - started))
                if self.stop_signal:
                    self._stopped(f"the study, after {job.what}")
            return total
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @staticmethod
    def _eta(remaining, finished):
        """Each run left at the seconds per iteration that runs which train alike (config, data, overrides)
        have taken so far, else runs of its kind (a frozen backbone's steps are a fraction of a fine-tuned
        one's); at the mean time of such a run where its length is not known yet. Runs of a kind none of
        which has finished are counted, not timed: a pretraining's step says little about a downstream
        one's (0.4 s against 0.9 s on 2 cores), and an ETA from it was half the time those runs took."""
        if not finished:
            return "ETA after the first run"

        def kind_of(job):  # a calibration times pretraining steps
            return "pretraining" if job.kind == "calibration" else job.kind

        by_group, by_kind = {}, {}
        for job, seconds in finished:
            kind = kind_of(job)
            by_group.setdefault((kind, job.speed_group), []).append((job.iterations, seconds))
            by_kind.setdefault(kind, []).append((job.iterations, seconds))
        total, timed, untimed = 0.0, 0, {}
        for job in remaining:
            if job.done:
                continue
            kind = kind_of(job)
            if kind not in by_kind:
                untimed[kind] = untimed.get(kind, 0) + 1
                continue
            done = by_group.get((kind, job.speed_group)) or by_kind[kind]
            measured = [(n, s) for n, s in done if n]
            if job.iterations and measured:
                total += job.iterations * sum(s for _, s in measured) / sum(n for n, _ in measured)
            else:
                total += sum(s for _, s in done) / len(done)
            timed += 1
        if not timed:
            return f"ETA after the first {' and the first '.join(f'{kind} run' for kind in sorted(untimed))}"
        hours, rest = divmod(int(total), 3600)
        eta = f"ETA {hours}:{rest // 60:02d}:{rest % 60:02d} for the {timed} run{'' if timed == 1 else 's'}"
        eta += " left" if not untimed else " timed so far"
        for kind, count in sorted(untimed.items()):
            eta += f", and {count} {kind} run{'' if count == 1 else 's'}: ETA after the first of them"
        return eta

    @staticmethod
    def _stopped(what):
        print(f"vader_d2: {what}, was stopped by a signal; run the same command again to continue", file=sys.stderr, flush=True)
        raise SystemExit(PREEMPTED_EXIT)

    def _forward(self, signum, frame):
        self.stop_signal = signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    # ---- running one training ----------------------------------------------------------------------------

    @staticmethod
    def start_run(run, record):
        os.makedirs(run, exist_ok=True)
        atomic_write_json(os.path.join(run, RUN_RECORD), record, "the run's command")

    def train(self, what, config, opts, output_dir, resume):
        logs = os.path.join(self.work, "logs")
        os.makedirs(logs, exist_ok=True)
        log = os.path.join(logs, re.sub(r"[^A-Za-z0-9_.-]+", "_", what) + ".txt")
        command = [sys.executable, self.train_net, "--config-file", config, *(["--resume"] if resume else []),
                   *opts, "OUTPUT_DIR", output_dir]
        if self.stop_signal:
            self._stopped(f"the study, before {what}")
        with open(log, "a") as f:
            f.write(f"$ {' '.join(command)}\n")
            f.flush()
            # A session of its own: the terminal's Ctrl-C reaches this runner only, which passes it on as
            # SIGTERM, the signal training turns into a checkpoint.
            self.child = subprocess.Popen(
                command, stdout=f, stderr=subprocess.STDOUT, preexec_fn=_end_with_parent, start_new_session=True
            )
            if self.stop_signal:  # a signal between the check above and the start
                self.child.send_signal(signal.SIGTERM)
            status = self.child.wait()
            self.child = None
        if status == 0:
            return
        last = _last_error_line(log)
        if status == PREEMPTED_EXIT or self.stop_signal:
            self._stopped(what)
        if status == USER_ERROR_EXIT:
            raise UserError(f"{what}: {last.removeprefix('vader_d2: ')} (its log: {log})")
        raise UserError(f"{what} failed with exit status {status} (its log: {log}; last line: {last})")

    # ---- calibration, pretraining, derived weights ---------------------------------------------------------

    def pretraining_record(self, init, seed, iterations):
        declared = self.study.initialisations[init]
        opts = self.pretraining_opts(init, seed, iterations)
        # The file it starts from: another initialisation's, or its config's own MODEL.WEIGHTS.
        weights = self.weights_of(declared.start_from, seed) if declared.start_from else self.facts.pretraining_configs[init].MODEL.WEIGHTS
        return _run_record(declared.pretrain, opts, weights)

    def pretraining_opts(self, init, seed, iterations):
        declared = self.study.initialisations[init]
        opts = [*self.facts.pretraining_base_opts(init), "SEED", str(seed), *self.facts.pretraining_schedule(init, iterations)]
        if declared.start_from:
            opts += ["MODEL.WEIGHTS", self.weights_of(declared.start_from, seed)]
        return opts

    def calibrate(self, init):
        declared = self.study.initialisations[init]
        run = os.path.join(self.work, "calibration", init)
        wait_for_previous_run(run)
        shutil.rmtree(run, ignore_errors=True)
        iterations = self.study.calibration_iterations
        # Speed only: no MODEL.WEIGHTS, whatever the initialisation starts from.
        opts = [*self.facts.pretraining_base_opts(init), *self.facts.pretraining_schedule(init, iterations), "MODEL.WEIGHTS", ""]
        self.train(f"calibration {init}", declared.pretrain, opts, run, resume=False)
        per_step = _training_speed(os.path.join(run, "log.txt"))
        if per_step is None:
            raise UserError(f"no training speed in {run}/log.txt after the calibration run of {init}; run the study again")
        calibration = self.calibration()
        calibration["calibration_iterations"] = iterations
        calibration["seconds_per_step"][init] = per_step
        atomic_write_json(os.path.join(self.out, "calibration.json"), calibration, "the calibration")
        if not self.needs_calibration():
            self._fix_equal_time_iterations()

    def pretrain(self, init, seed):
        declared = self.study.initialisations[init]
        seed = self.pretraining_seed(seed)
        run = self.pretraining_dir(init, seed)
        export = os.path.join(run, "d2.pkl")
        iterations = self.pretraining_iterations(init)
        opts = self.pretraining_opts(init, seed, iterations)
        record = self.pretraining_record(init, seed, iterations)
        wait_for_previous_run(run)
        if not _same_command(run, record):
            shutil.rmtree(run, ignore_errors=True)
        if not os.path.exists(os.path.join(run, "model_final.pth")):
            # The same command continues from its last checkpoint (reproducible, not bit-equal).
            self.start_run(run, record)
            self.train(f"seed {seed} pretraining {init}", declared.pretrain, opts, run, resume=True)
        from ..checkpoint.export import export_to_detectron2

        export_to_detectron2(os.path.join(run, "model_final.pth"), export)
        images, batch = self.facts.unlabeled_images, self.facts.pretraining_batch(init)
        record_path = pretraining_record_path(self.study, self.out, init, seed)
        digest = file_sha256(export)
        say_whether_remade_model_is_equal(f"seed {seed}'s {init} pretraining", record_path, digest)
        record = {
            "init": init, "seed": seed, "config": declared.pretrain, "start_from": declared.start_from,
            "iterations": iterations, "unlabeled_images": images, "ims_per_batch": batch,
            "epochs": round(iterations * batch / images, 3), "seconds_per_step": _training_speed(os.path.join(run, "log.txt")),
            "weights_sha256": digest,
        }
        record_declaration(self.study, self.out)
        atomic_write_json(record_path, record, "the pretraining record")

    def derived_weights(self, init, seed):
        """A resnet_of initialisation's file: its source's export without the FPN tensors (made once)."""
        declared = self.study.initialisations[init]
        target = os.path.join(self.pretraining_dir(init, self.pretraining_seed(seed)), "d2.pkl")
        source = self.weights_of(declared.resnet_of, self.pretraining_seed(seed))
        # A URL's file does not change; a local one may have been pretrained again since.
        if not os.path.exists(target) or "://" not in source and os.path.getmtime(target) < os.path.getmtime(source):
            write_resnet_only(source, target)
        return target

    # ---- a downstream run ------------------------------------------------------------------------------

    def downstream(self, task, budget, init, seed):
        declared_task = self.study.tasks[task]
        declared_init = self.study.initialisations[init]
        weights = self.derived_weights(init, seed) if declared_init.resnet_of else self.weights_of(init, self.pretraining_seed(seed))
        run = os.path.join(self.work, f"seed{seed}", f"{task}_{budget}", init)
        opts = self.facts.downstream_opts(task, budget, weights, seed)
        max_iter = self.facts.downstream_iterations(task, budget)

        def result_of_run():
            # Detectron2 logs the final evaluation at iteration MAX_ITER (its loop's counter after the loop).
            return finetune_result(init, seed, run, final_iteration=max_iter, task=task, budget=budget, weights=weights,
                                   weights_sha256=file_sha256(weights) if os.path.isfile(weights) else None, max_iter=max_iter)

        result = None
        record = _run_record(declared_task.config, opts, weights)
        if os.path.exists(os.path.join(run, "model_final.pth")) and _same_command(run, record):
            try:
                result = result_of_run()
            except UserError:
                pass  # trained, but stopped during its final evaluation: it is made again
        if result is None:
            # An unfinished run starts over: its result then equals an uninterrupted run's.
            wait_for_previous_run(run)
            shutil.rmtree(run, ignore_errors=True)
            self.start_run(run, record)
            self.train(f"seed {seed} {task} {budget} labels {init}", declared_task.config, opts, run, resume=False)
            result = result_of_run()
        record_declaration(self.study, self.out)
        atomic_write_json(result_path(self.out, seed, task, budget, init), result, "the result")
        drop_periodic_checkpoints(run)


def say_whether_remade_model_is_equal(what, record_path, digest):
    """A pretraining made again where OUT already records one (its model was lost with the work folder):
    OUT's earlier results of it were made with the recorded model. Whether the new one is bit-equal
    depends on the machine (kernels, GPUs); a different one is kept and said, so that a lost machine costs
    no finished work, and each result names the sha256 of the weights it loaded."""
    if not os.path.exists(record_path):
        return
    try:
        record = read_json_file(record_path, "pretraining record")
    except UserError:  # damaged: it is about to be written again
        record = None
    earlier = record.get("weights_sha256") if isinstance(record, dict) else None
    if not isinstance(earlier, str):
        print(f"[transfer_study] {what} was made again; {record_path} does not say which model OUT's earlier results "
              "of it were made with (no weights_sha256), so whether this one is bit-equal is not known", flush=True)
    elif earlier == digest:
        print(f"[transfer_study] {what} was made again, bit-equal to the model OUT's earlier results of it were made with", flush=True)
    else:
        print(f"[transfer_study] {what} was made again and is not bit-equal to the model OUT's earlier results of it "
              f"were made with (sha256 {earlier[:12]}, now {digest[:12]}): those results stay, and each result names "
              "the sha256 of the weights it loaded", flush=True)


def drop_periodic_checkpoints(run):
    """A finished downstream run's model_<iteration>.pth files: an unfinished run starts over and never
    resumes from them, and a long schedule (Mask R-CNN R-50: a few hundred MB every 5000 iterations) times
    every seed, budget and initialisation would fill a disk. model_final.pth stays; a file that cannot be
    deleted stays too, with a line saying so (the result is written: the study goes on)."""
    delete_checkpoints(run, [name for name in list_checkpoints(run) if name != "model_final.pth"],
                       lambda problem: print(f"[transfer_study] {problem}", flush=True))


def wait_for_previous_run(run, seconds=300):
    """A training of a runner that was killed gets SIGTERM and writes its checkpoint before it ends: wait
    for it to let go of its folder before the folder is reused."""
    if not os.path.isdir(run):
        return
    deadline = time.monotonic() + seconds
    said = False
    while True:
        lock = OutputDirLock(run, what="run folder")
        try:
            lock.acquire()
        except UserError:
            if not said:
                print(f"[transfer_study] waiting (at most {seconds} s) for an earlier training to let go of {run}", flush=True)
                said = True
            if time.monotonic() > deadline:
                raise UserError(f"{run} is still held by an earlier training after {seconds} s; stop it and run again") from None
            time.sleep(1)
            continue
        lock.release()
        return


def read_model_zoo_pkl(source):
    """``(content, its "model" dict)`` of a Detectron2 model-zoo ``.pkl``: a file, or a URL Detectron2
    downloads once into its cache (as MODEL.WEIGHTS would)."""
    try:
        local = PathManager.get_local_path(source)
    except Exception as e:  # iopath's errors for an unreachable URL have no common base
        raise UserError(f"cannot fetch {source!r} ({short_error(e)})") from None
    try:
        with open(local, "rb") as f:
            weights = pickle.load(f, encoding="latin1")  # Detectron2's model zoo: pickles of Python 2
        return weights, dict(weights["model"])
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, UnicodeDecodeError, AttributeError) as e:
        raise UserError(f"{source!r} is not a Detectron2 model-zoo .pkl ({type(e).__name__}: {e})") from None


def write_resnet_only(source, target):
    """The model-zoo ``.pkl`` ``source`` without its FPN tensors (names with a part starting ``fpn_``), so
    that the downstream FPN starts from Detectron2's initialisation, as from an export of a ResNet alone."""
    weights, model = read_model_zoo_pkl(source)
    resnet = {name: value for name, value in model.items() if not is_fpn_tensor(name)}
    if len(resnet) == len(model):
        raise UserError(f"{source!r} has no FPN tensors (fpn_*) to leave out")
    atomic_write(target, lambda f: pickle.dump({**weights, "model": resnet}, f), what="the ResNet-only weights")


def is_fpn_tensor(name):
    return any(part.startswith("fpn_") for part in name.split("."))


def _training_speed(log):
    """Seconds per iteration from Detectron2's last "Overall training speed" line of ``log``."""
    try:
        with open(log) as f:
            speeds = SPEED_LINE.findall(f.read())
    except OSError:
        return None
    return float(speeds[-1]) if speeds else None


def _last_error_line(log):
    try:
        with open(log, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "(no log)"
    errors = [line for line in lines if line.startswith("vader_d2: ")]
    return errors[-1] if errors else (lines[-1] if lines else "(empty log)")


def budget_images(records, budgets, order, seed):
    """The nested label budgets: ``{N: the first N records}`` of one order of ``records`` (the listed
    order, or a shuffle with ``seed``)."""
    indices = list(range(len(records)))
    if order == "shuffled":
        random.Random(seed).shuffle(indices)
    ordered = [records[i] for i in indices]
    return {budget: ordered[:budget] for budget in budgets}
