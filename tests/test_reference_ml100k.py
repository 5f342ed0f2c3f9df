"""ml-100k coldstart against the independent reference table of docs/protocols.md."""

import json

import pytest

from metarec.cli import main

# support size -> method -> (ndcg@10, recall@10, hr@10, mrr), and the test user count
REFERENCE = {
    10: (
        {"pop": (0.1147, 0.1069, 0.6825, 0.2911), "itemknn": (0.2028, 0.1899, 0.7725, 0.4287)},
        189,
    ),
    5: ({"itemknn": (0.2047, 0.1857, 0.7937, 0.4474)}, 189),
    20: ({"itemknn": (0.1558, 0.1501, 0.6739, 0.3478)}, 184),
}


@pytest.mark.integration
@pytest.mark.parametrize("support_size", sorted(REFERENCE))
def test_coldstart_reproduces_reference(support_size, ml100k_dir, tmp_path):
    expected, n_users = REFERENCE[support_size]
    output = tmp_path / "results.json"
    status = main([
        "evaluate", "--dataset", "ml-100k", "--data-dir", str(ml100k_dir),
        "--cache-dir", str(tmp_path / "cache"), "--protocol", "coldstart",
        "--support-size", str(support_size), "--query-size", "10", "--split-seed", "0",
        "--methods", ",".join(expected), "--bootstrap-resamples", "200", "--output", str(output),
    ])  # fmt: skip
    assert status == 0
    results = json.loads(output.read_text())
    assert results["n_test_users"] == n_users
    assert results["protocol"]["support_size"] == support_size
    for method, (ndcg, recall, hr, mrr) in expected.items():
        measured = results["methods"][method]
        assert measured["ndcg@10"] == pytest.approx(ndcg, abs=1e-3)
        assert measured["recall@10"] == pytest.approx(recall, abs=1e-3)
        assert measured["hr@10"] == pytest.approx(hr, abs=1e-3)
        assert measured["mrr"] == pytest.approx(mrr, abs=1e-3)
        low, high = measured["ndcg@10_ci"]
        assert low < measured["ndcg@10"] < high
    if support_size == 10:
        # popularity recommends the same few items to everyone: low coverage and novelty,
        # concentrated (high Gini); item-kNN follows each user's support
        pop, itemknn = results["methods"]["pop"], results["methods"]["itemknn"]
        for key in ("coverage@10", "novelty@10", "gini@10", "diversity@10", "coverage@20"):
            assert key in pop and key in itemknn
        assert pop["coverage@10"] < 0.05 < itemknn["coverage@10"]
        assert pop["gini@10"] > itemknn["gini@10"] > 0.5
        assert pop["novelty@10"] < itemknn["novelty@10"]
