"""The metrics sample (audit.metrics.sample): stratified, seeded, stable as the dataset grows."""
import numpy as np
import pandas as pd

from audit.metrics.sample import listed_sample, sample_members, shard_sample_digests


def _ids(n, start=0):
    return np.array([f"img-{i:05d}" for i in range(start, start + n)])


def test_the_sample_takes_per_class_images_of_each_class_and_all_of_a_smaller_one():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 20 + [-1] * 5)
    chosen = sample_members(_ids(len(labels)), labels, 4, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [4, 3, 4]  # class 1 has only 3; label −1 is never sampled
    again = sample_members(_ids(len(labels)), labels, 4, seed=0)
    other = sample_members(_ids(len(labels)), labels, 4, seed=1)
    assert (chosen == again).all() and not (chosen == other).all()
    assert not sample_members(_ids(len(labels)), labels, 0, seed=0).any()


def test_a_grown_dataset_keeps_its_sample_unless_a_new_image_hashes_lower():
    labels = np.arange(400) % 4
    before = set(_ids(400)[sample_members(_ids(400), labels, 8, seed=3)])
    grown_ids = np.concatenate([_ids(400), _ids(100, start=400)])
    grown_labels = np.concatenate([labels, np.arange(100) % 4])
    after = set(grown_ids[sample_members(grown_ids, grown_labels, 8, seed=3)])
    new_in_sample = {i for i in after if int(i[-5:]) >= 400}
    assert after & set(_ids(400)) <= before  # no old image enters the sample because the dataset grew
    assert len(before - after) == len(new_in_sample)  # each one that leaves was outranked by a new one
    assert len(before - after) < len(before) / 2


def test_each_shard_gets_a_digest_of_its_share_of_the_sample():
    listing = pd.DataFrame({
        "image_id": _ids(60), "label": np.repeat(["a", "b", "c"], 20), "split": np.tile(["train", "audit"], 30),
        "shard": np.repeat([0, 1, 2], 20), "present": True,
    })
    sample = listed_sample(listing, 5, 0, ["audit"])
    assert (sample["split"] == "audit").all() and sample.groupby("label").size().tolist() == [5, 5, 5]
    digests = shard_sample_digests(listing, 5, 0, ["audit"])
    assert set(digests) == {0, 1, 2} and len(set(digests.values())) == 3
    listing.loc[listing["image_id"] == sample["image_id"].iloc[0], "present"] = False  # a sampled image of shard 0 leaves
    changed = shard_sample_digests(listing, 5, 0, ["audit"])
    assert changed[0] != digests[0] and changed[1] == digests[1] and changed[2] == digests[2]
