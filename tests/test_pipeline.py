"""The end-to-end pipeline on a tiny model and synthetic users, and its explanations."""

import json
import re

import numpy as np
import pytest
import torch
from matplotlib.image import imread

pytest.importorskip("faiss", reason='needs FAISS: pip install -e ".[cpu]" (or ".[gpu]")')

from conftest import synthetic_files, tiny_config_file

from metarec.cli import main
from metarec.meta.explain import explain
from metarec.trained_run import TrainedRun

STEPS = ["data check", "item encoding", "meta-training", "FAISS index", "evaluate support 5",
         "evaluate support 10", "batch rerank", "report"]  # fmt: skip


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    data = synthetic_files(folder, n_users=120, seed=4)
    config_file = tiny_config_file(folder, data, users_per_batch=16, pretrain_epochs=1, epochs=1)
    run_dir = folder / "run"
    status = main(["pipeline", "--config", str(config_file), "--run-dir", str(run_dir),
                   "--supports", "5,10", "--baselines", "pop,itemknn",
                   "--bootstrap-resamples", "100"])  # fmt: skip
    assert status == 0
    return run_dir, data


def test_report_shows_the_evaluated_numbers_and_figures(pipeline_run):
    run_dir, _ = pipeline_run
    report = (run_dir / "report.md").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    for support in ("5", "10"):
        for method in ("pop", "itemknn", "llm-noadapt", "llm-finetune", "meta-lora"):
            mean = results[support]["methods"][method]["ndcg@10"]
            row = re.search(rf"^\| {method} \|(.*)$", report, re.MULTILINE).group(1)
            assert f"{mean:.4f}" in row
    for figure in ("coldstart_curve.png", "training_curves.png"):
        assert f"]({figure})" in report
        height, width, _ = imread(run_dir / figure).shape
        assert height > 200 and width > 400
    assert report.count("### User ") == 3
    html = (run_dir / "report.html").read_text()
    assert "<table>" in html and '<img alt="ndcg@10 against support size' in html
    assert list(json.loads((run_dir / "timings.json").read_text())) == STEPS


def test_run_records_config_seeds_commit_and_versions(pipeline_run):
    run_dir, _ = pipeline_run
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["meta"]["inner_lr"] == 0.5
    assert record["seeds"] == {"seed": 0, "split_seed": 0, "backbone_seed": 0}
    assert (
        record["packages"]["torch"] == torch.__version__.split("+")[0]
        or record["packages"]["torch"] == torch.__version__
    )
    assert re.fullmatch(r"[0-9a-f]{40}", record["git_commit"])


def test_explanations_equal_scoring_each_leave_one_out_history_alone(pipeline_run):
    run_dir, data = pipeline_run
    run = TrainedRun(run_dir, data)
    method, dataset = run.recommender(), run.dataset
    history = dataset.sequences()[3][:6]
    items = np.array([5, 17, 40])
    explanations = explain(method, history, items)
    full = method.score([history])[0]
    unadapted_method = type(method)(method.model, method.meta, method.rates, 0)
    unadapted = unadapted_method.score([history])[0]
    for explanation, item in zip(explanations, items, strict=True):
        assert explanation.score == pytest.approx(full[item], abs=1e-5)
        assert explanation.adaptation_delta == pytest.approx(full[item] - unadapted[item], abs=1e-5)
        for j, contribution in enumerate(explanation.contributions):
            alone = method.score([np.delete(history, j)])[0, item]
            assert contribution == pytest.approx(full[item] - alone, abs=1e-5)
    assert max(abs(e.adaptation_delta) for e in explanations) > 1e-3
