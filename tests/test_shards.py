"""Arrival shards: how a listing assigns and keeps each image's shard across runs (audit.data.shards)."""
import pandas as pd

from audit.data.shards import LEDGER_COLUMNS, LISTING_COLUMNS, ROW_COLUMNS, assign_shards


def _rows(ids: list[str], fingerprints: dict[str, str] | None = None) -> pd.DataFrame:
    fingerprints = fingerprints or {}
    return pd.DataFrame({
        **{column: [f"{column}-{i}" for i in ids] for column in ROW_COLUMNS}, "image_id": ids,
        "fingerprint": [fingerprints.get(i, f"fp-{i}") for i in ids],
    })


def _ledger(listing: pd.DataFrame, shard_size: int) -> pd.DataFrame:
    """The ledger as the next run reads it: only its ledger columns, with the listing's attrs."""
    ledger = listing[LEDGER_COLUMNS].copy()
    ledger.attrs = {"shard_size": shard_size}
    return ledger


def test_ids_keep_their_shards_and_new_ids_fill_the_last_one_first():
    first = assign_shards(_rows(list("abcde")), None, shard_size=2)
    assert list(first.columns) == LISTING_COLUMNS and first["image_id"].dtype == "str"
    assert first["shard"].tolist() == [0, 0, 1, 1, 2] and first["present"].all() and (first["generation"] == 0).all()

    # b is gone, c changed, f and g are new: f fills shard 2, g opens shard 3
    second = assign_shards(_rows(list("acdefg"), {"c": "changed"}), _ledger(first, 2), shard_size=2)
    by_id = second.set_index("image_id")
    assert by_id["shard"].to_dict() == {"a": 0, "b": 0, "c": 1, "d": 1, "e": 2, "f": 2, "g": 3}
    assert not by_id.loc["b", "present"] and by_id.drop(index="b")["present"].all()
    assert (by_id.loc["b", ROW_COLUMNS[1:]] == "").all() and by_id.loc["b", "fingerprint"] == "fp-b"  # an absent id keeps its last fingerprint
    assert by_id.loc["c", "fingerprint"] == "changed" and by_id.loc["a", "path"] == "path-a"
    assert second["shard"].is_monotonic_increasing

    # b comes back: its shard again, one more generation
    third = assign_shards(_rows(list("abcdefg")), _ledger(second, 2), shard_size=2).set_index("image_id")
    assert third.loc["b", "shard"] == 0 and third.loc["b", "generation"] == 1 and third.loc["b", "path"] == "path-b"
    assert (third.drop(index="b")["generation"] == 0).all() and third["present"].all()


def test_a_ledger_of_another_shard_size_is_numbered_afresh():
    first = assign_shards(_rows(list("abcde")), None, shard_size=2)
    again = assign_shards(_rows(list("abcde")), _ledger(first, 2), shard_size=4)
    assert again["shard"].tolist() == [0, 0, 0, 0, 1]
