"""
Transfer studies: does pretraining on your unlabeled images make your Detectron2 model better, and with
which method? A study is one declared YAML file (declaration.py: data, label budgets, tasks,
initialisations, pretraining length, seeds); tools/transfer_study.py checks it (checks.py), runs it a
seed at a time and resumably (runner.py), and makes its table and plot (results.py).
"""

from .declaration import Study, load_study, parse_study
from .results import collect, gain_table, plot_gains, read_result, schedule_table

__all__ = ["Study", "load_study", "parse_study", "collect", "gain_table", "plot_gains", "read_result", "schedule_table"]
