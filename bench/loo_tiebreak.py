"""How the timestamp tie-break moves loo results on ml-100k: item id (ours) vs file order.

ml-100k has many ratings with equal timestamps. docs/protocols.md orders them by item id;
RecBole's stable sort on the timestamp alone keeps the file's row order. This prints pop and
itemknn under both, so the gap to RecBole's published figures can be traced to that choice.

    python bench/loo_tiebreak.py --data-dir ../shared/data [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from metarec.baselines.itemknn import ItemKNN, ItemKNNConfig
from metarec.baselines.pop import Pop, PopConfig
from metarec.data.movielens import RATING_COLUMNS, locate
from metarec.data.splits import loo_split
from metarec.data.tables import read_separated
from metarec.eval.ranking import evaluate_cases


def sequences(ratings: pd.DataFrame, order: list[str]) -> list:
    ordered = ratings.sort_values(order, kind="stable")
    return [group["item_id"].to_numpy() - 1 for _, group in ordered.groupby("user_id", sort=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = locate("ml-100k", args.data_dir, Path("~/.cache/metarec").expanduser())
    ratings = read_separated(folder / "u.data", RATING_COLUMNS, "\t", "iso-8859-1")
    n_items = int(ratings["item_id"].max())
    orders = {
        "item id (docs/protocols.md)": ["user_id", "timestamp", "item_id"],
        "file order (RecBole)": ["user_id", "timestamp"],
    }
    results = {}
    for label, order in orders.items():
        split = loo_split(sequences(ratings, order), n_items)
        for method in (Pop(PopConfig()), ItemKNN(ItemKNNConfig(neighbours=None))):
            method.fit(split.train_sequences, n_items, split.valid)
            metrics = evaluate_cases(method.score, split.test, (10,))
            results[f"{type(method).__name__} / {label}"] = {
                "ndcg@10": float(metrics["ndcg@10"].mean()),
                "hr@10": float(metrics["hr@10"].mean()),
            }
    print("| method / tie-break | ndcg@10 | hr@10 |\n|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {values['ndcg@10']:.4f} | {values['hr@10']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
