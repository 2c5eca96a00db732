"""The study scripts' command lines: a bad value is one line and exit status 2, before any work starts."""

import os
import subprocess

import pytest

from .helpers import REPO, assert_one_line_refusal


@pytest.mark.parametrize(
    "script, arguments, environment, expected",
    [
        ("compare_pretraining.sh", ["6OO"], {}, "ITERS must be a whole number of at least 1, not '6OO'"),
        ("compare_pretraining.sh", ["600", "{out}", "0"], {}, "SEEDS must be a whole number of at least 1, not '0'"),
        ("compare_pretraining.sh", ["600", "{out}"], {"GLOBAL_EQUAL_TIME": "yes"}, "GLOBAL_EQUAL_TIME must be 1 or 0, not 'yes'"),
        ("compare_finetuning.sh", ["600", "{out}", "1"], {"FINETUNE_ITERS": "5"}, "FINETUNE_ITERS must be a whole number of at least 10, not '5'"),
        ("compare_finetuning.sh", ["600", "{out}", "1"], {"TASKS": "keypoints"}, "TASKS: unknown task 'keypoints'"),
        ("compare_finetuning.sh", ["600", "{out}", "1"], {}, "missing {out}/seed1/moco_global_1800/model_final.pth: run experiments/compare_pretraining.sh 600 {out} 1 first"),
        ("compare_key_bn.sh", ["-1", "{out}"], {}, "ITERS must be a whole number of at least 1, not '-1'"),
        ("sweep_demo_recipe.sh", ["{out}", "lr9"], {}, "no run named 'lr9' in the grid"),
    ],
)
def test_experiment_scripts_refuse_a_bad_value_in_one_line(tmp_path, script, arguments, environment, expected):
    out = str(tmp_path / "out")
    # PY points nowhere: the refusal must come before the script runs Python at all.
    env = {**os.environ, **environment, "PY": str(tmp_path / "no_python")}
    command = ["bash", os.path.join(REPO, "experiments", script), *(a.format(out=out) for a in arguments)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert_one_line_refusal(result, expected.format(out=out))
    assert not (tmp_path / "out").exists()
