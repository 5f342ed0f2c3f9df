"""Classical baselines behind one interface, built by name from YAML hyper-parameters."""

from __future__ import annotations

import difflib
from typing import Any

from metarec.baselines.content import Content, ContentConfig, TextVectors
from metarec.baselines.ease import EASE, EASEConfig
from metarec.baselines.itemknn import ItemKNN, ItemKNNConfig
from metarec.baselines.pop import Pop, PopConfig
from metarec.baselines.sasrec import SASRec, SASRecConfig
from metarec.baselines.userknn import UserKNN, UserKNNConfig
from metarec.config import from_mapping
from metarec.errors import ConfigError
from metarec.eval.recommender import Recommender

BASELINES: dict[str, tuple[type[Recommender], type]] = {
    "pop": (Pop, PopConfig),
    "itemknn": (ItemKNN, ItemKNNConfig),
    "userknn": (UserKNN, UserKNNConfig),
    "ease": (EASE, EASEConfig),
    "sasrec": (SASRec, SASRecConfig),
    "content": (Content, ContentConfig),
}
TEXT_BASELINES = ("content",)  # built with the catalogue's text vectors


def build_baseline(
    name: str, hyperparameters: dict[str, Any], text_vectors: TextVectors | None = None
) -> Recommender:
    """A fresh baseline ``name`` configured from its section of the baselines YAML.

    A section naming no baseline is an error too (a typo there would silently fall
    back to nothing). ``text_vectors`` gives the text baselines their item vectors.
    """
    sections = [*BASELINES, "fusion"]  # fusion's members and grid (metarec.baselines.fusion)
    for section in hyperparameters:
        if section not in sections:
            close = difflib.get_close_matches(section, sections, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"baselines config: unknown section '{section}'{hint}")
    if name not in BASELINES:
        raise ConfigError(f"unknown method '{name}'; known: {', '.join(BASELINES)}")
    model_class, config_class = BASELINES[name]
    config = from_mapping(config_class, hyperparameters.get(name), where=name)
    if name not in TEXT_BASELINES:
        return model_class(config)
    if text_vectors is None:
        raise ConfigError(f"{name} scores item text: build it with the dataset's text vectors")
    return model_class(config, text_vectors)
