"""The study scripts' command lines: a bad value is one line and exit status 2, before any work starts."""

import os
import subprocess

import pytest

from .conftest import REPO

TRANSFER_STUDY = os.path.join(REPO, "experiments", "transfer_study.sh")


@pytest.mark.parametrize(
    "environment, seeds, expected",
    [
        ({"METHODS": "vader dino"}, "1", "METHODS: unknown method 'dino'"),
        ({"METHODS": "pixpro vader_resnet"}, "1", "METHODS must include vader"),
        ({"TASKS": "detection"}, "1", "TASKS: unknown task 'detection'"),
        ({"BUDGETS": "20"}, "1", "the label budgets are 10, 30 and 100, not '20'"),
        ({"VADER_ITERS": "10"}, "1", "VADER_ITERS must be a whole number of at least 30"),
        ({}, "1 two", "seeds must be whole numbers from 1, not 'two'"),
    ],
)
def test_transfer_study_refuses_a_bad_value_in_one_line(tmp_path, environment, seeds, expected):
    # PY points nowhere: the refusal must come before the script runs Python at all.
    env = {**os.environ, **environment, "PY": str(tmp_path / "no_python")}
    result = subprocess.run(["bash", TRANSFER_STUDY, seeds, str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("vader_d2: ") and expected in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
