"""
Every command shares one error path (vader_d2/cli.py): a mistake ends it with exactly one line
`vader_d2: ...` on stderr, exit status 2 and no traceback. Each tool is driven once with a mistake a user
makes: weights that are not there, or an output path that cannot be written (under a file).
"""

import pytest

from vader_d2.errors import UserError

from .helpers import DEMO_CONFIG, load_tool, run_python, single_error_line

MISTAKES = {
    "evaluate_dense-missing-weights": (
        ["tools/evaluate_dense.py", "--config-file", DEMO_CONFIG, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "{tmp}/nowhere/model_final.pth"],
        "MODEL.WEIGHTS '{tmp}/nowhere/model_final.pth' does not exist",
    ),
    "visualize-unwritable-output-dir": (
        ["tools/visualize.py", "--config-file", DEMO_CONFIG, "--output-dir", "{tmp}/a_file/pictures", "MODEL.DEVICE", "cpu"],
        "cannot create --output-dir '{tmp}/a_file/pictures': Not a directory",
    ),
    "convert-missing-input": (
        ["tools/convert_vader_to_d2.py", "--input", "{tmp}/model_final.pth", "--output", "{tmp}/vader.pkl"],
        "--input '{tmp}/model_final.pth' does not exist",
    ),
    "weight_change-missing-checkpoint": (
        ["tools/weight_change.py", "--config-file", DEMO_CONFIG, "{tmp}/model_final.pth"],
        "checkpoint '{tmp}/model_final.pth' does not exist",
    ),
    "propagate_labels-missing-davis": (
        ["tools/propagate_labels.py", "--config-file", DEMO_CONFIG, "--davis-root", "{tmp}/nowhere", "MODEL.DEVICE", "cpu"],
        "DAVIS folder '{tmp}/nowhere' does not exist",
    ),
    "benchmark-unwritable-output": (
        ["-m", "benchmarks.vader_overhead", "--output", "{tmp}/a_file/benchmark.json"],
        "cannot create the folder of --output '{tmp}/a_file': ",
    ),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_tool_reports_a_mistake_in_one_line(name, tmp_path):
    (tmp_path / "a_file").write_text("a file, not a folder")
    args, expected = MISTAKES[name]
    args = [a.format(tmp=tmp_path) for a in args]
    result = run_python(*args, timeout=120)
    line = single_error_line(result)
    assert "Traceback" not in result.stdout + result.stderr
    assert line.startswith("vader_d2: " + expected.format(tmp=tmp_path)), line


def test_more_mistakes_of_the_tools_are_user_errors(tmp_path):
    """The same checks, in this process: what run_cli turns into one line."""
    (tmp_path / "a_file").write_text("a file, not a folder")
    (tmp_path / "truncated.pth").write_bytes(b"PK\x03\x04" + bytes(1000))  # the start of a zip, cut short
    convert = load_tool("convert_vader_to_d2")
    with pytest.raises(UserError, match=r"^cannot read VADeR checkpoint '.*truncated.pth' with torch.load"):
        convert.main(convert.parse_args(["--input", str(tmp_path / "truncated.pth"), "--output", str(tmp_path / "vader.pkl")]))
    with pytest.raises(UserError, match=r"^cannot create the folder of --output '.*a_file': "):
        convert.main(convert.parse_args(["--input", str(tmp_path / "truncated.pth"), "--output", str(tmp_path / "a_file" / "vader.pkl")]))
    assert not (tmp_path / "vader.pkl").exists()
    evaluate = load_tool("evaluate_dense")
    with pytest.raises(UserError, match=r"^cannot create the folder of --output '.*a_file': "):
        evaluate.setup(evaluate.parse_args(["--config-file", DEMO_CONFIG, "--output", str(tmp_path / "a_file" / "r.json")]))
    # Results to print beside this run's are read first: a mistake there ends the command before the evaluation.
    (tmp_path / "propagation.json").write_text('{"name": "x", "label_propagation": {}}')
    with pytest.raises(UserError, match=r"^cannot read results file '.*nowhere.json': "):
        evaluate.main(evaluate.parse_args(["--config-file", DEMO_CONFIG, "--beside", str(tmp_path / "nowhere.json")]))
    with pytest.raises(UserError, match=r"^results file '.*propagation.json' holds no dense evaluation results"):
        evaluate.main(evaluate.parse_args(["--config-file", DEMO_CONFIG, "--beside", str(tmp_path / "propagation.json")]))
    (tmp_path / "dense.json").write_text('{"name": "x", "correspondence_protocol": {}}')
    propagate = load_tool("propagate_labels")
    with pytest.raises(UserError, match=r"^results file '.*dense.json' holds no label propagation results"):
        propagate.main(propagate.parse_args(["--config-file", DEMO_CONFIG, "--beside", str(tmp_path / "dense.json")]))
    (tmp_path / "a_number.json").write_text("5")  # valid JSON, not a results object
    with pytest.raises(UserError, match=r"^results file '.*a_number.json' holds no label propagation results"):
        propagate.main(propagate.parse_args(["--config-file", DEMO_CONFIG, "--beside", str(tmp_path / "a_number.json")]))


def test_auto_device_is_the_gpu_where_one_is_visible_else_the_cpu(capsys):
    import torch

    from vader_d2.cli import build_config

    cfg = build_config(DEMO_CONFIG)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert cfg.MODEL.DEVICE == expected
    assert f"MODEL.DEVICE auto: running on {expected}" in capsys.readouterr().out
    # A device given on the command line is kept as given, and nothing is said.
    assert build_config(DEMO_CONFIG, ["MODEL.DEVICE", "cpu"]).MODEL.DEVICE == "cpu"
    assert capsys.readouterr().out == ""
