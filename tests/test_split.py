"""Lesion-grouped, stratified split on the genuine HAM10000 metadata (10,015 rows, 7,470 lesions)."""
import pandas as pd
import pytest

from lesionspark.core.classes import CLASSES
from lesionspark.dataset.split import SPLITS, assign_splits, check_fractions


@pytest.fixture(scope="module")
def genuine(genuine_dir):
    return pd.read_csv(genuine_dir / "HAM10000_metadata.csv")


FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_genuine_split_groups_lesions_and_keeps_class_proportions(genuine):
    assert len(genuine) == 10015 and genuine["lesion_id"].nunique() == 7470
    split = assign_splits(genuine, FRACTIONS, seed=42)
    assert split.notna().all() and set(split) == set(SPLITS)
    per_lesion = genuine.assign(split=split).groupby("lesion_id")["split"].nunique()
    assert (per_lesion == 1).all()  # no lesion in two splits
    whole = genuine["dx"].value_counts(normalize=True)
    for s in SPLITS:
        part = genuine[split == s]
        assert abs(len(part) / len(genuine) - FRACTIONS[s]) < 0.01
        props = part["dx"].value_counts(normalize=True).reindex(CLASSES, fill_value=0)
        assert (abs(props - whole.reindex(CLASSES)) * 100).max() < 1.5, (s, props)


def test_split_is_seeded(genuine):
    a = assign_splits(genuine, FRACTIONS, seed=1)
    assert a.equals(assign_splits(genuine, FRACTIONS, seed=1))
    assert not a.equals(assign_splits(genuine, FRACTIONS, seed=2))


def test_a_class_does_not_move_when_another_is_removed(genuine):
    full = genuine.assign(split=assign_splits(genuine, FRACTIONS, seed=5))
    no_df = genuine[genuine["dx"] != "df"]
    partial = no_df.assign(split=assign_splits(no_df, FRACTIONS, seed=5))
    assert full.loc[no_df.index, "split"].equals(partial["split"])


def test_fractions_are_checked():
    with pytest.raises(ValueError):
        check_fractions({"train": 0.8, "val": 0.3, "test": 0.1})
    zero_val = assign_splits(pd.DataFrame({"lesion_id": list("abcd"), "dx": ["nv"] * 4}),
                             {"train": 0.5, "val": 0.0, "test": 0.5}, 0)
    assert "val" not in set(zero_val)
