"""The `metarec` command end to end on a user's own CSV files."""

import json

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metarec.cli import main
from metarec.data.custom import load_custom
from metarec.data.synthetic import synthetic_raw
from metarec.errors import DataError


@pytest.fixture()
def custom_files(tmp_path):
    raw = synthetic_raw(n_users=120, n_items=80, seed=1)
    interactions, items = raw.write_csv(tmp_path)
    return [
        "--dataset",
        "custom",
        "--interactions",
        str(interactions),
        "--items",
        str(items),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]


def test_evaluate_writes_json_and_per_user_parquet(custom_files, tmp_path, capsys):
    output, per_user = tmp_path / "out" / "results.json", tmp_path / "out" / "per_user.parquet"
    status = main(
        [
            "evaluate",
            *custom_files,
            "--methods",
            "pop,itemknn",
            "--support-size",
            "5",
            "--k",
            "5,10",
            "--output",
            str(output),
            "--per-user-output",
            str(per_user),
        ]
    )
    assert status == 0
    results = json.loads(output.read_text())
    assert results["protocol"] == {
        "name": "coldstart",
        "ks": [5, 10],
        "support_size": 5,
        "query_size": 10,
        "split_seed": 0,
        "dataset": "interactions",
        "min_rating": None,
        "k_core": 0,
    }
    assert results["n_test_users"] == 24  # 120 users - int(84) - int(12)
    table = pd.read_parquet(per_user)
    assert len(table) == 2 * results["n_test_users"]
    for method in ("pop", "itemknn"):
        rows = table[table["method"] == method]
        for metric in ("ndcg@10", "recall@5", "mrr"):
            assert rows[metric].mean() == pytest.approx(results["methods"][method][metric])
    assert results["methods"]["itemknn"]["ndcg@10"] > results["methods"]["pop"]["ndcg@10"]
    assert "| itemknn |" in capsys.readouterr().out


def test_sampled_protocol_ranks_among_candidates(custom_files, tmp_path):
    output, per_user = tmp_path / "sampled.json", tmp_path / "sampled.parquet"
    arguments = ["--protocol", "sampled", "--methods", "pop", "--output", str(output)]
    assert main(["evaluate", *custom_files, *arguments, "--per-user-output", str(per_user)]) == 0
    results = json.loads(output.read_text())
    assert results["protocol"]["num_negatives"] == 19
    # each target is ranked among its 20 candidates only, never the whole catalogue of 80
    assert pd.read_parquet(per_user)["mrr"].min() >= 1 / 20


def test_data_prepare_prints_statistics(custom_files, capsys):
    assert main(["data", "prepare", *custom_files]) == 0
    printed = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert printed["users"] == "120" and printed["items"] == "80"
    assert printed["removed_duplicates"] == "0"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.text(alphabet='0123456789,"\r\n -xé', max_size=120).map(str.encode))
def test_loader_fuzz_either_loads_or_names_the_file(body, tmp_path):
    path = tmp_path / "fuzz.csv"
    path.write_bytes(b"user_id,item_id,timestamp\n" + body)
    try:
        raw = load_custom(path)
    except DataError as err:
        assert str(err).startswith(str(path))
        return
    # ids are integers or text (metarec.data.custom), never a mix of both in one column
    users = raw.interactions["user_id"]
    assert pd.api.types.is_integer_dtype(users.dtype) or users.map(type).eq(str).all()
    assert len(raw.interactions) >= 1
