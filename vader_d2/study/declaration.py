"""
A transfer study's declaration: one YAML file that fixes the whole grid before anything runs
(docs/transfer.md, "Does pretraining help on my data?", has a complete example).

    description: my photos, 30 and 100 labels            # free text
    seeds: [1, 2, 3]                                     # each drives a downstream run of every cell
    unlabeled: ["folder:/data/photos"]                   # pretraining data: dataset names, several allowed
    label_budgets: [30, 100]                             # nested: the first N of one order of the train set
    budget_order: shuffled                               # or as_listed (the set's order: a COCO json's by image id)
    budget_seed: 0                                       # the shuffle's seed
    tasks:                                               # name: a downstream config and its data
      mask_rcnn:
        config: configs/downstream/lowlabel_mask_rcnn_R_18_FPN.yaml
        train: "coco:/data/labels/train.json:/data/labels/images"
        test: "coco:/data/labels/test.json:/data/labels/images"
        frozen: false                                    # optional: MODEL.FROZEN_BACKBONE
        schedule: {epochs: 40, min_iterations: 300}      # or {iterations: 300}; default: the config's; or
                                                         # each budget's: {per_budget: {30: {iterations: 1200}, 100: {epochs: 40}}}
        overrides: {SOLVER.BASE_LR: 0.01}                # optional KEY: VALUE
        metrics: [segm/AP, bbox/AP]                      # optional: the numbers the table shows
    initialisations:                                     # name: what the downstream model starts from
      random_init: {random: true}                        # the reference every gain is measured against
      vader: {pretrain: configs/vader_pretrain_demo.yaml, length: {iterations: 160}}
      pixpro: {pretrain: configs/pixpro_demo.yaml}       # length from pretraining: below
      moco_half: {pretrain: configs/moco_global_demo.yaml, length: {equal_time_as: vader, fraction: 0.5}}
      vader_after_moco:                                  # MoCo v2, then VADeR from its export: the
        pretrain: configs/vader_pretrain_demo.yaml       # other half of VADeR's time
        start_from: moco_half
        length: {iterations: 80}
      vader_resnet: {resnet_of: vader}                   # an export without its FPN tensors
      imagenet: {weights: /models/R-18.pkl}              # an existing checkpoint or model-zoo .pkl
    pretraining:
      length: {equal_time_as: vader}                     # or {iterations: N} or {epochs: N}
      calibration_iterations: 30                         # for equal_time_as: a short run of each method
      per_seed: true                                     # pretrain anew for each seed (false: once)
      overrides: {MODEL.DEVICE: cpu}
    downstream:
      overrides: {MODEL.DEVICE: cpu}

Paths are relative to the folder the tool runs in, as on every vader_d2 command line. A mistake in the
file (an unknown key, a name used before it is declared, a value of the wrong kind) is one line.
"""

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import yaml

from ..errors import UserError, read_text_file

__all__ = ["Study", "Task", "Initialisation", "Length", "Schedule", "load_study", "parse_study", "study_digest"]

NAME = re.compile(r"[a-z][a-z0-9_]*")
BUDGET_ORDERS = ("shuffled", "as_listed")
PLAIN_SCHEDULE_KEYS = ("iterations", "epochs", "min_iterations")


@dataclass(frozen=True)
class Length:
    """How long a pretraining runs: exactly one of iterations, epochs (passes over the unlabeled images),
    or the wall time of another initialisation's pretraining (by a calibration of step times)."""

    iterations: Optional[int] = None
    epochs: Optional[int] = None
    equal_time_as: Optional[str] = None
    fraction: float = 1.0  # of the reference's time, with equal_time_as (a two-stage pretraining's share)


@dataclass(frozen=True)
class Schedule:
    """A downstream run's length: fixed iterations, or passes over the budget's images with a floor;
    neither: the config's own MAX_ITER. Or ``per_budget``: one of these for each label budget."""

    iterations: Optional[int] = None
    epochs: Optional[float] = None
    min_iterations: int = 1
    per_budget: Tuple[Tuple[int, "Schedule"], ...] = ()  # (budget, its schedule) pairs, by budget

    def for_budget(self, budget):
        """The schedule of the runs on ``budget`` labels."""
        return dict(self.per_budget)[budget] if self.per_budget else self


@dataclass(frozen=True)
class Task:
    name: str
    config: str
    train: str
    test: str
    frozen: Optional[bool] = None
    schedule: Schedule = Schedule()
    overrides: Tuple[str, ...] = ()
    metrics: Tuple[str, ...] = ()

    @property
    def trains_like(self):
        """What decides a downstream run besides its length and its label budget (not the numbers shown)."""
        pairs = tuple(sorted(zip(self.overrides[::2], self.overrides[1::2])))
        return (self.config, self.train, self.test, self.frozen, pairs)


@dataclass(frozen=True)
class Initialisation:
    """One of: random (Detectron2's own initialisation), pretrain (a pretraining config, run by the study),
    weights (an existing file), resnet_of (another initialisation's export without its FPN)."""

    name: str
    random: bool = False
    pretrain: Optional[str] = None
    weights: Optional[str] = None
    resnet_of: Optional[str] = None
    start_from: Optional[str] = None
    length: Optional[Length] = None
    overrides: Tuple[str, ...] = ()

    @property
    def kind(self):
        return "random" if self.random else "pretrain" if self.pretrain else "weights" if self.weights else "resnet_of"

    @property
    def depends_on(self):
        """The initialisations whose weights this one needs first."""
        return tuple(name for name in (self.resnet_of, self.start_from) if name)


@dataclass(frozen=True)
class Study:
    path: str
    digest: str
    text: str
    description: str
    seeds: Tuple[int, ...]
    unlabeled: Tuple[str, ...]
    label_budgets: Tuple[int, ...]
    budget_order: str
    budget_seed: int
    tasks: Dict[str, Task]
    initialisations: Dict[str, Initialisation]
    calibration_iterations: int
    pretrain_per_seed: bool
    pretraining_overrides: Tuple[str, ...]
    downstream_overrides: Tuple[str, ...]
    default_length: Optional[Length] = None
    reference: Optional[str] = field(default=None)

    def length_of(self, init):
        return self.initialisations[init].length or self.default_length

    @property
    def pretrained(self):
        """The initialisations the study pretrains, each after the ones it starts from."""
        ordered = []

        def visit(name):
            init = self.initialisations[name]
            for dependency in init.depends_on:
                visit(dependency)
            if init.pretrain and name not in ordered:
                ordered.append(name)

        for name in self.initialisations:
            visit(name)
        return ordered


# Config keys each run's command sets after the declared overrides, and what in the study sets them.
SET_BY_STUDY_DOWNSTREAM = {
    "MODEL.WEIGHTS": "each initialisation's weights",
    "DATASETS.TRAIN": "the label budget's images of the task's train:",
    "DATASETS.TEST": "the task's test:",
    "SEED": "seeds:",
    "OUTPUT_DIR": "--work-dir",
}
SET_BY_STUDY_PRETRAINING = {"DATASETS.TRAIN": "unlabeled:", "SEED": "seeds:", "OUTPUT_DIR": "--work-dir", "SOLVER.MAX_ITER": "length:"}


def _set_by_task(name, task):
    """The keys a task's own declaration sets in its runs' commands."""
    return {
        **({"MODEL.FROZEN_BACKBONE": f"tasks.{name}.frozen"} if "frozen" in task else {}),
        **({"SOLVER.MAX_ITER": f"tasks.{name}.schedule"} if "schedule" in task else {}),
    }


def _shown(value, whole=False):
    """A declared value as a message quotes it; a number PyYAML read as text ("30", or 1e3: YAML's floats
    need a dot and a signed exponent) says how to write it."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return repr(value)
        return f"{value!r} (text to YAML: write {'a whole number unquoted, e.g. 1000' if whole else 'a number as 1000 or 1.0e+3'})"
    return repr(value)


def study_digest(declared):
    """sha256 of the declared grid: comments, layout and the description may change, no other value may."""
    grid = {key: value for key, value in declared.items() if key != "description"}
    # The budgets are nested whatever order they are listed in.
    grid["label_budgets"] = sorted(grid["label_budgets"])
    return hashlib.sha256(json.dumps(grid, sort_keys=True).encode()).hexdigest()


class _DeclarationLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping: PyYAML keeps the last silently,
    and a declaration that fixes the grid must not lose a task or an initialisation without a word."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # << merges an anchor's keys; a key beside it overrides them by design
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # an unhashable key (a list): the base loader refuses it in its own words
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_study(path):
    return parse_study(read_text_file(path, "study file"), path)


def parse_study(text, path):
    try:
        declared = yaml.load(text, Loader=_DeclarationLoader)
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    reader = _Reader(path)
    top = reader.mapping(declared, "the study file", required=("seeds", "label_budgets", "tasks", "initialisations"),
                         optional=("description", "unlabeled", "budget_order", "budget_seed", "pretraining", "downstream"))
    seeds = reader.whole_numbers(top["seeds"], "seeds", minimum=0)
    if max(seeds) >= 2**31:
        # Detectron2 seeds NumPy with SEED plus the process's rank, which NumPy takes below 2**32 only:
        # 2**31 leaves room for any number of processes.
        reader.fail("seeds", f"must be below 2**31 = {2**31}, not {max(seeds)}")
    budgets = reader.whole_numbers(top["label_budgets"], "label_budgets", minimum=1)
    order = top.get("budget_order", "shuffled")
    if order not in BUDGET_ORDERS:
        reader.fail("budget_order", f"must be one of {', '.join(BUDGET_ORDERS)}, not {order!r}")
    budget_seed = reader.whole_number(top.get("budget_seed", 0), "budget_seed", minimum=0)
    unlabeled = tuple(reader.strings(top.get("unlabeled", []), "unlabeled"))
    pretraining = reader.mapping(top.get("pretraining", {}), "pretraining",
                                 optional=("length", "calibration_iterations", "per_seed", "overrides"))
    downstream = reader.mapping(top.get("downstream", {}), "downstream", optional=("overrides",))

    tasks = {}
    for name, value in reader.named(top["tasks"], "tasks").items():
        where = f"tasks.{name}"
        task = reader.mapping(value, where, required=("config", "train", "test"),
                              optional=("frozen", "schedule", "overrides", "metrics"))
        frozen = task.get("frozen")
        if frozen is not None and not isinstance(frozen, bool):
            reader.fail(f"{where}.frozen", f"must be true or false, not {frozen!r}")
        tasks[name] = Task(
            name=name,
            config=reader.string(task["config"], f"{where}.config"),
            train=reader.string(task["train"], f"{where}.train"),
            test=reader.string(task["test"], f"{where}.test"),
            frozen=frozen,
            schedule=reader.schedule(task.get("schedule"), f"{where}.schedule", budgets),
            overrides=reader.overrides(task.get("overrides"), f"{where}.overrides", {**SET_BY_STUDY_DOWNSTREAM, **_set_by_task(name, task)}),
            metrics=tuple(reader.strings(task.get("metrics", []), f"{where}.metrics")),
        )

    inits = {}
    for name, value in reader.named(top["initialisations"], "initialisations").items():
        where = f"initialisations.{name}"
        init = reader.mapping(value, where, optional=("random", "pretrain", "weights", "resnet_of", "start_from", "length", "overrides"))
        kinds = [kind for kind in ("random", "pretrain", "weights", "resnet_of") if init.get(kind) not in (None, False)]
        if len(kinds) != 1:
            reader.fail(where, "needs exactly one of random: true, pretrain: CONFIG, weights: FILE, resnet_of: INITIALISATION"
                        + (f" (it gives {', '.join(kinds)})" if kinds else ""))
        if "random" in init and init["random"] is not True:
            reader.fail(f"{where}.random", f"must be true, not {init['random']!r}")
        for key in ("start_from", "length", "overrides"):
            if key in init and "pretrain" not in init:
                reader.fail(f"{where}.{key}", "applies to a pretrain: initialisation only")
        inits[name] = Initialisation(
            name=name,
            random=bool(init.get("random")),
            pretrain=reader.string(init["pretrain"], f"{where}.pretrain") if "pretrain" in init else None,
            weights=reader.string(init["weights"], f"{where}.weights") if "weights" in init else None,
            resnet_of=reader.string(init["resnet_of"], f"{where}.resnet_of") if "resnet_of" in init else None,
            start_from=reader.string(init["start_from"], f"{where}.start_from") if "start_from" in init else None,
            length=reader.length(init["length"], f"{where}.length") if "length" in init else None,
            overrides=reader.overrides(init.get("overrides"), f"{where}.overrides",
                                       {**SET_BY_STUDY_PRETRAINING, **({"MODEL.WEIGHTS": f"{where}.start_from"} if "start_from" in init else {})}),
        )
    references = [name for name, init in inits.items() if init.random]
    if len(references) > 1:
        reader.fail("initialisations", f"has {len(references)} random initialisations ({', '.join(references)}); gains are measured against one")
    per_seed = pretraining.get("per_seed", True)
    if not isinstance(per_seed, bool):
        reader.fail("pretraining.per_seed", f"must be true or false, not {per_seed!r}")
    study = Study(
        path=path,
        digest=study_digest(declared),
        text=text,
        description=str(top.get("description", "")),
        seeds=tuple(seeds),
        unlabeled=unlabeled,
        label_budgets=tuple(sorted(budgets)),
        budget_order=order,
        budget_seed=budget_seed,
        tasks=tasks,
        initialisations=inits,
        calibration_iterations=reader.whole_number(pretraining.get("calibration_iterations", 30), "pretraining.calibration_iterations", minimum=10),
        pretrain_per_seed=per_seed,
        pretraining_overrides=reader.overrides(pretraining.get("overrides"), "pretraining.overrides", {
            **SET_BY_STUDY_PRETRAINING,
            # reversed: the first declaration that sets a key is the one named.
            **{"MODEL.WEIGHTS": f"initialisations.{name}.start_from" for name, init in reversed(inits.items()) if init.start_from},
        }),
        downstream_overrides=reader.overrides(downstream.get("overrides"), "downstream.overrides", {
            **SET_BY_STUDY_DOWNSTREAM,
            **{key: reason for name, task in reversed(top["tasks"].items()) for key, reason in _set_by_task(name, task).items()},
        }),
        default_length=reader.length(pretraining["length"], "pretraining.length") if "length" in pretraining else None,
        reference=references[0] if references else None,
    )
    _check_references(study, reader)
    return study


def _check_references(study, reader):
    inits = study.initialisations
    for name, init in inits.items():
        where = f"initialisations.{name}"
        for key, other in (("resnet_of", init.resnet_of), ("start_from", init.start_from)):
            if other is None:
                continue
            if other not in inits:
                reader.fail(f"{where}.{key}", f"names {other!r}, which is not declared (declared: {', '.join(inits)})")
            if inits[other].kind not in ("pretrain", "weights"):
                reader.fail(f"{where}.{key}", f"names {other!r}, which brings no weights of its own (a pretrain: or weights: initialisation does)")
        if init.pretrain:
            length = study.length_of(name)
            if length is None:
                reader.fail(f"{where}", "has no length: give it length: or give pretraining: a length:")
            if length.equal_time_as:
                reference = length.equal_time_as
                if reference not in inits or not inits[reference].pretrain:
                    reader.fail(f"{where}.length.equal_time_as" if init.length else "pretraining.length.equal_time_as",
                                f"names {reference!r}, which is not a pretrain: initialisation of this study")
                if study.length_of(reference) is None or study.length_of(reference).equal_time_as:
                    reader.fail(f"initialisations.{reference}", "is the equal_time_as reference, so it needs its own length: in iterations or epochs")
    for name in inits:
        _check_no_cycle(inits, name, [], reader)
    runs = {}
    for task in study.tasks.values():
        # Budget by budget: a per_budget schedule may declare at every budget what a plain one does.
        run = (task.trains_like, tuple(task.schedule.for_budget(budget) for budget in study.label_budgets))
        if run in runs:
            reader.fail(f"tasks.{task.name}", f"is the same run as tasks.{runs[run]} (only the numbers shown may differ); declare it once")
        runs[run] = task.name
    if study.unlabeled == () and any(init.pretrain for init in inits.values()):
        reader.fail("unlabeled", "names no dataset, but the study pretrains; list the unlabeled images' dataset names")


def _check_no_cycle(inits, name, path, reader):
    if name in path:
        reader.fail("initialisations", f"start from each other in a circle: {' -> '.join(path + [name])}")
    for dependency in inits[name].depends_on:
        _check_no_cycle(inits, dependency, path + [name], reader)


def _label_budgets(numbers):
    return f"label budget{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"


class _Reader:
    """Reads the parsed YAML, failing with one line that names the file and the key."""

    def __init__(self, path):
        self.path = path

    def fail(self, where, what):
        raise UserError(f"{self.path}: {where} {what}")

    def mapping(self, value, where, required=(), optional=()):
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping of keys to values, not {type(value).__name__}")
        known = (*required, *optional)
        for key in value:
            if key not in known:
                self.fail(where, f"has an unknown key {key!r} (known: {', '.join(known)})")
        for key in required:
            if key not in value:
                self.fail(where, f"needs the key {key!r}")
        return value

    def named(self, value, where):
        if not isinstance(value, dict) or not value:
            self.fail(where, "must map at least one name to its declaration")
        for name in value:
            if not isinstance(name, str) or not NAME.fullmatch(name):
                self.fail(where, f"has the name {name!r}: names are lower case letters, digits and _, starting with a letter")
        return value

    def string(self, value, where):
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"must be a non-empty string, not {value!r}")
        return value

    def strings(self, value, where):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.fail(where, f"must be a list of strings, not {value!r}")
        return [self.string(item, where) for item in value]

    def whole_number(self, value, where, minimum):
        if type(value) is not int or value < minimum:
            self.fail(where, f"must be a whole number of at least {minimum}, not {_shown(value, whole=True)}")
        return value

    def whole_numbers(self, value, where, minimum):
        if not isinstance(value, list) or not value:
            self.fail(where, f"must be a non-empty list of whole numbers, not {value!r}")
        numbers = [self.whole_number(item, where, minimum) for item in value]
        if len(set(numbers)) != len(numbers):
            self.fail(where, f"lists a number twice: {numbers}")
        return numbers

    def overrides(self, value, where, set_by_study):
        """``{KEY: VALUE}`` as the ``KEY VALUE`` list of a command line (lists become Python literals).
        ``set_by_study``: ``{KEY: what sets it}`` for keys the study appends after the overrides, which
        would silently lose to it."""
        if value is None:
            return ()
        self.mapping(value, where, optional=tuple(value) if isinstance(value, dict) else ())
        flat = []
        for key, item in value.items():
            if not isinstance(key, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*", key):
                self.fail(where, f"has the key {key!r}: config keys are written in full and in capitals, e.g. SOLVER.BASE_LR")
            if key in set_by_study:
                self.fail(f"{where}.{key}", f"is set by the study itself ({set_by_study[key]}), not by an override")
            scalar = (str, int, float, bool)
            if isinstance(item, (list, tuple)) and all(isinstance(x, scalar) for x in item):
                item = repr(tuple(item))
            elif not isinstance(item, scalar):
                self.fail(f"{where}.{key}", f"must be a number, a string, true / false or a list of them, not {item!r}")
            flat += [key, str(item)]
        return tuple(flat)

    def length(self, value, where):
        self.mapping(value, where, optional=("iterations", "epochs", "equal_time_as", "fraction"))
        kinds = [key for key in value if key != "fraction"]
        if len(kinds) != 1:
            self.fail(where, "needs exactly one of iterations: N, epochs: N, equal_time_as: INITIALISATION")
        key = kinds[0]
        if key == "equal_time_as":
            fraction = value.get("fraction", 1.0)
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < math.inf:
                self.fail(f"{where}.fraction", f"must be a positive share of the reference's time, not {_shown(fraction)}")
            return Length(equal_time_as=self.string(value[key], f"{where}.equal_time_as"), fraction=float(fraction))
        if "fraction" in value:
            self.fail(f"{where}.fraction", "applies to equal_time_as: only")
        return Length(**{key: self.whole_number(value[key], f"{where}.{key}", minimum=1)})

    def schedule(self, value, where, budgets):
        if value is None:
            return Schedule()
        self.mapping(value, where, optional=(*PLAIN_SCHEDULE_KEYS, "per_budget"))
        if "per_budget" not in value:
            return self.plain_schedule(value, where, alternative=", or per_budget: {BUDGET: {iterations: N}, ...}")
        if len(value) > 1:
            others = ", ".join(key for key in value if key != "per_budget")
            self.fail(where, f"has {others} beside per_budget: give each budget's whole schedule under per_budget")
        return Schedule(per_budget=self.budget_schedules(value["per_budget"], f"{where}.per_budget", budgets))

    def budget_schedules(self, value, where, budgets):
        """``{budget: schedule}`` for exactly the declared budgets, as ``(budget, Schedule)`` pairs by budget."""
        if not isinstance(value, dict):
            self.fail(where, f"must map each label budget to its schedule, e.g. {{30: {{iterations: 1200}}}}, not {value!r}")
        for budget in value:
            # Whole numbers as in label_budgets (YAML reads 30: as one); '30' and 30 would be two keys.
            if type(budget) is not int:
                self.fail(where, f"has the key {budget!r}: its keys are label budgets, whole numbers as in label_budgets")
        declared = f"(declared: {', '.join(map(str, sorted(budgets)))})"
        undeclared = sorted(set(value) - set(budgets))
        if undeclared:
            self.fail(where, f"has a schedule for {_label_budgets(undeclared)}, not declared {declared}")
        missing = sorted(set(budgets) - set(value))
        if missing:
            self.fail(where, f"has no schedule for {_label_budgets(missing)} {declared}")
        return tuple((budget, self.plain_schedule(value[budget], f"{where}.{budget}")) for budget in sorted(value))

    def plain_schedule(self, value, where, alternative=""):
        self.mapping(value, where, optional=PLAIN_SCHEDULE_KEYS)
        if ("iterations" in value) == ("epochs" in value):
            self.fail(where, "needs exactly one of iterations: N or epochs: N (with min_iterations: N)" + alternative)
        if "iterations" in value:
            if "min_iterations" in value:
                self.fail(f"{where}.min_iterations", "applies to epochs: only")
            return Schedule(iterations=self.whole_number(value["iterations"], f"{where}.iterations", minimum=1))
        epochs = value["epochs"]
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not 0 < epochs < math.inf:
            self.fail(f"{where}.epochs", f"must be a positive number of passes over the budget's images, not {_shown(epochs)}")
        return Schedule(epochs=float(epochs), min_iterations=self.whole_number(value.get("min_iterations", 1), f"{where}.min_iterations", minimum=1))
