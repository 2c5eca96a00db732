"""experiments/resnet_only_weights.py: an export's ResNet alone, everything else of the file as it was."""

import os
import pickle
import subprocess
import sys

import numpy as np

from .helpers import REPO, assert_one_line_refusal

SCRIPT = os.path.join(REPO, "experiments", "resnet_only_weights.py")


def run(*args):
    return subprocess.run([sys.executable, "-W", "ignore", SCRIPT, *args], cwd=REPO, capture_output=True, text=True)


def test_leaves_out_the_fpn_only_and_keeps_the_rest_of_the_file(tmp_path):
    model = {
        "stem.conv1.weight": np.ones((2, 3, 1, 1), dtype=np.float32),
        "res5.1.conv2.weight": np.full((2, 2, 3, 3), 2.0, dtype=np.float32),
        "fpn_lateral2.weight": np.zeros((4, 2, 1, 1), dtype=np.float32),
        "fpn_output5.bias": np.zeros(4, dtype=np.float32),
    }
    source = tmp_path / "d2.pkl"
    source.write_bytes(pickle.dumps({"model": model, "__author__": "vader_d2", "matching_heuristics": True}))

    result = run("--input", str(source), "--output", str(tmp_path / "resnet.pkl"))

    assert result.returncode == 0, result.stderr
    written = pickle.loads((tmp_path / "resnet.pkl").read_bytes())
    assert written["__author__"] == "vader_d2" and written["matching_heuristics"] is True
    assert sorted(written["model"]) == ["res5.1.conv2.weight", "stem.conv1.weight"]
    assert all(np.array_equal(written["model"][k], model[k]) for k in written["model"])
    assert not (tmp_path / "resnet.pkl.partial").exists()


def test_a_file_without_fpn_or_not_a_pickle_is_one_line(tmp_path):
    no_fpn = tmp_path / "resnet.pkl"
    no_fpn.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": np.ones(1)}}))
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    for source, expected in ((no_fpn, "has no FPN tensors"), (text, "is not a Detectron2 model-zoo .pkl")):
        result = run("--input", str(source), "--output", str(tmp_path / "out.pkl"))
        assert_one_line_refusal(result, expected)
        assert not (tmp_path / "out.pkl").exists()
