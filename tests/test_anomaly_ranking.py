"""The ranking the report leads with: the largest within-class robust z of the embedding's, relative and local
scores; on digits audits with marks and wrong labels planted, it loses neither kind (CNN and ViT trained here)."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from audit.anomaly_ranking import combined_ranking, outliers_within_class, within_class_z


def test_the_combined_score_is_the_largest_robust_z_within_the_class():
    table = pd.DataFrame({
        "image_id": list("abcdefgh"), "label": [0, 0, 0, 0, 0, 1, 1, 1],
        "score": [1.0, 2.0, 3.0, 4.0, 40.0, 5.0, 6.0, 9.0],
        "relative_score": [0.0, 1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0],
        "local_score": [10.0, 11.0, 90.0, 12.0, 13.0, 7.0, np.nan, 8.0],
    })
    ranked = combined_ranking(table)
    # class 0: score median 3, MAD 1 → z of 40 = 37 / 1.4826; local median 12, MAD 1 → z of 90 = 78 / 1.4826
    assert ranked.loc[4, "combined_score"] == pytest.approx(37 / 1.4826) and ranked.loc[4, "odd_in"] == "overall"
    assert ranked.loc[2, "combined_score"] == pytest.approx(78 / 1.4826) and ranked.loc[2, "odd_in"] == "one place"
    assert ranked.loc[[2, 4], "combined_rank"].tolist() == [1, 2]
    expected = pd.concat([within_class_z(table, c) for c in ("score", "relative_score", "local_score")], axis=1).max(axis=1)
    np.testing.assert_allclose(ranked["combined_score"], expected)
    assert ranked.loc[6, "combined_score"] == pytest.approx(expected[6]) and ranked.loc[6, "odd_in"] == "overall"  # no local score: the others
    assert outliers_within_class(ranked).tolist() == [False, False, True, False, True, False, False, False]
    lone = combined_ranking(pd.DataFrame({"image_id": ["x"], "label": [0], "score": [np.nan], "local_score": [np.nan]}))
    assert lone["combined_score"].isna().all() and lone["combined_rank"].isna().all() and lone["odd_in"].tolist() == [""]


def _marked(images: np.ndarray, candidates: np.ndarray, share: float, sizes: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A copy of ``images`` (N, 3, S, S) where ``share`` of ``candidates`` carry one white square of a size drawn from
    ``sizes`` at a random place off the stroke (no ink within 2 px); the marked indices and their centres (y, x) in pixels."""
    rng = np.random.default_rng(seed)
    side = images.shape[-1]
    marked = images.copy()
    chosen = rng.choice(candidates, size=int(round(share * len(candidates))), replace=False)
    centres = []
    for i in chosen:
        size = int(rng.choice(sizes))
        for _ in range(500):
            top, left = rng.integers(1, side - size - 1, size=2)
            if images[i, 0, max(0, top - 2) : top + size + 2, max(0, left - 2) : left + size + 2].max() < 40:
                break
        marked[i, :, top : top + size, left : left + size] = 255
        centres.append((top + size / 2, left + size / 2))
    return marked, chosen, np.array(centres)


def _ranked(model, meta, data, images: np.ndarray, folder) -> pd.DataFrame:
    """The audit's anomaly table of ``images`` (the embedding's and relative scores, the trimmed local scores, the
    combined ranking), in image order."""
    import dask.array as da
    import torch

    from audit.anomaly import anomaly_table
    from audit.features import forward_features
    from audit.local_anomaly import in_memory, local_scores, trimmed_distances
    from audit.reference_groups.leave_one_out import LeaveOneOut
    from audit.reference_groups.store import group_from_store, write_reference_store
    from audit.storage import open_zarr

    parts = [forward_features(model, meta, torch.from_numpy(images[start : start + 256])) for start in range(0, len(images), 256)]
    activations, logits = np.concatenate([p[0] for p in parts]), np.concatenate([p[2] for p in parts])
    embedding = activations.mean(axis=(2, 3))
    folder.mkdir(parents=True, exist_ok=True)
    write_reference_store(da.from_array(embedding, chunks=512), data.labels, list(meta.class_names), folder / "reference.zarr")
    reference = open_zarr(folder / "reference.zarr").load()
    table = anomaly_table(embedding, data.labels, logits.argmax(1), data.image_ids, data.split, LeaveOneOut(reference), list(meta.class_names), group_from_store(reference, "all"))
    table = table.set_index("image_id").loc[data.image_ids].reset_index()
    distances, _ = trimmed_distances(in_memory(activations, data.labels), len(meta.class_names), np.arange(activations.shape[1]))
    table["local_score"], table["local_row"], table["local_column"] = local_scores(distances)
    table.attrs["grid"] = activations.shape[-1]
    return combined_ranking(table)


def _auroc(flagged: np.ndarray, scores: pd.Series, leave_out: np.ndarray) -> float:
    keep = ~leave_out & scores.notna().to_numpy()
    return roc_auc_score(flagged[keep], scores[keep])


def _check_marks(table: pd.DataFrame, marked: np.ndarray, centres: np.ndarray, wrong: np.ndarray, side: int) -> dict:
    """AUROC of each ranking on the marks (the wrong labels left out) and on the wrong labels (the marks left out), and
    the share of marked images whose peak cell is within one cell of the mark."""
    is_marked = np.zeros(len(table), bool)
    is_marked[marked] = True
    cell = side / table.attrs["grid"]
    near = (np.abs(table.loc[marked, "local_row"].to_numpy() - centres[:, 0] // cell) <= 1) & (np.abs(table.loc[marked, "local_column"].to_numpy() - centres[:, 1] // cell) <= 1)
    result = {"within_one_cell": near.mean()}
    for ranking in ("score", "local_score", "combined_score"):
        result[f"{ranking} marks"] = _auroc(is_marked, table[ranking], wrong)
        result[f"{ranking} wrong"] = _auroc(wrong, table[ranking], is_marked)
    return result


@pytest.fixture(scope="module")
def wrong_digits():
    """Digits at 64 px (the demo's size) with 5 % of the held-out images given a wrong label (the demo's planted label errors)."""
    from audit.data.digits import load_digits_dataset

    return load_digits_dataset(image_size=64, audit_fraction=0.3, seed=0, mislabel_fraction=0.05)


@pytest.mark.parametrize("share,sizes,seed", [(0.03, (2, 3, 4), 1), (0.06, (3, 4, 5, 6), 2)])
def test_a_cnn_audit_finds_local_marks_and_wrong_labels_alike(wrong_digits, tmp_path, share, sizes, seed, cnn_on_clean_digits):
    """resnet10t trained four epochs on the clean digits (layer4: 512 × 8 × 8, as in the demo); small marks of several sizes at random places
    off the stroke on 3 % or 6 % of the held-out images: the local score finds them (AUROC ≥ 0.95, its peak within
    one cell of the mark for ≥ 90 %), and the combined ranking finds both the marks and the wrong labels with AUROC
    ≥ 0.99, where the embedding's score alone misses marks. Measured here: marks 0.999, wrong labels 0.994 (0.9975
    after six epochs, 0.990 after three)."""
    model, meta = cnn_on_clean_digits
    candidates = np.flatnonzero((wrong_digits.split == "audit") & ~wrong_digits.flagged)
    images, marked, centres = _marked(wrong_digits.images, candidates, share, sizes, seed)
    found = _check_marks(_ranked(model, meta, wrong_digits, images, tmp_path), marked, centres, wrong_digits.flagged, 64)
    assert found["local_score marks"] >= 0.95 and found["within_one_cell"] >= 0.9, found
    assert found["combined_score marks"] >= 0.99 and found["combined_score wrong"] >= 0.99, found
    assert found["score marks"] < found["combined_score marks"], found


@pytest.fixture(scope="module")
def cnn_on_clean_digits(wrong_digits):
    from audit.models.train import fit_model
    from audit.settings import ModelSettings, TrainSettings

    model, meta = fit_model(wrong_digits, ModelSettings(name="resnet10t", kwargs={"output_stride": 8}, layer="layer4", train=TrainSettings(epochs=4, seed=0)))
    return model.eval(), meta


def test_a_vit_audit_finds_local_marks_on_its_patch_grid(tmp_path):
    """A small ViT (two blocks; patch 4 at 32 px: 8 × 8 tokens, the two register tokens and CLS left out) trained on
    the digits; marks of 2 to 4 px on 6 % and 10 % of the held-out images: the local score finds them (AUROC ≥ 0.95,
    its peak within one cell of the mark for ≥ 90 %) and the combined ranking keeps them and the wrong labels.
    Measured: marks 0.998–0.999 (the embedding's score 0.89); wrong labels 0.956–0.959 combined against 0.972 for
    the embedding's score alone: on this weaker model (held-out accuracy 0.91) the tokens' natural local oddities
    outrank a few wrong labels."""
    from audit.data.digits import load_digits_dataset
    from audit.models.train import fit_model
    from audit.settings import ModelSettings, TrainSettings

    data = load_digits_dataset(image_size=32, audit_fraction=0.3, seed=0, mislabel_fraction=0.05)
    kwargs = {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 4, "reg_tokens": 2}
    train = TrainSettings(epochs=25, batch_size=32, shift=1, seed=0)
    model, meta = fit_model(data, ModelSettings(name="vit_tiny_patch16_224", kwargs=kwargs, layer="auto", train=train))
    model.eval()
    assert meta.metrics["audit_accuracy"] > 0.85, meta.metrics
    candidates = np.flatnonzero((data.split == "audit") & ~data.flagged)
    for share, sizes, seed in ((0.06, (2, 3, 4), 3), (0.1, (3, 4), 6)):
        images, marked, centres = _marked(data.images, candidates, share, sizes, seed)
        table = _ranked(model, meta, data, images, tmp_path / str(seed))
        assert table.attrs["grid"] == 8
        found = _check_marks(table, marked, centres, data.flagged, 32)
        assert found["local_score marks"] >= 0.95 and found["within_one_cell"] >= 0.9, found
        assert found["combined_score marks"] >= 0.95 and found["combined_score wrong"] >= 0.93, found


def test_the_robust_z_is_the_distance_from_the_median_in_mad_standard_deviations():
    from audit.robust import robust_z

    values = np.array([1.0, 2.0, np.nan, 3.0, 4.0, 100.0])  # median 3, |v − 3| = 2, 1, 0, 1, 97: MAD 1
    np.testing.assert_allclose(robust_z(values), (values - 3.0) / 1.4826)
    assert np.isnan(robust_z(values)[2])
    assert np.isnan(robust_z(np.array([5.0, 5.0, 5.0, 9.0]))).all()  # MAD 0: no spread to measure against
    assert np.isnan(robust_z(np.full(3, np.nan))).all()
