"""Datasets as raw unsigned integer pixels, the same values the hardware streams in.

Only scikit-learn's ``digits`` (8×8 images, pixels 0..16, shipped inside the scikit-learn wheel,
so no network) is supported for now; other datasets come later and must keep this interface:
``(x_train, y_train, x_test, y_test)`` with ``x`` uint8 of shape (N, n_in) and ``y`` int64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DIGITS", "DATASETS", "DatasetError", "load_digits_split", "load_dataset",
           "dataset_info"]

#: scikit-learn digits: 1797 images of 8×8 pixels with 17 grey levels (0..16), 10 classes.
DIGITS = dict(name="digits", n_in=64, n_classes=10, pixel_max=16, default_threshold=8)

#: Every dataset :func:`load_dataset` knows, by name.
DATASETS = {"digits": DIGITS}


class DatasetError(ValueError):
    """An unknown dataset name or unusable dataset arguments."""


def load_digits_split(seed: int = 0, test_fraction: float = 0.2):
    """Stratified, deterministic train/test split of scikit-learn's digits.

    Returns ``(x_train, y_train, x_test, y_test)``: pixels as uint8 (N, 64) holding the original
    integers 0..16, labels as int64 (N,). The same ``seed`` always gives the same split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must lie strictly between 0 and 1, "
                           f"got {test_fraction!r}")
    ds = load_digits()
    x = np.asarray(ds.data)
    if not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() > DIGITS["pixel_max"]:
        raise DatasetError("scikit-learn digits: pixels are not integers in 0..16")
    x = x.astype(np.uint8)
    y = np.asarray(ds.target).astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y, shuffle=True)
    return (np.ascontiguousarray(x_tr), np.ascontiguousarray(y_tr),
            np.ascontiguousarray(x_te), np.ascontiguousarray(y_te))


def load_dataset(name: str, seed: int = 0, test_fraction: float = 0.2):
    """Load a dataset by name (see :data:`DATASETS`).

    Returns ``(x_train, y_train, x_test, y_test)``; an unknown name raises :class:`DatasetError`.
    """
    if name == "digits":
        return load_digits_split(seed=seed, test_fraction=test_fraction)
    raise DatasetError(f"unknown dataset {name!r}; supported: {', '.join(sorted(DATASETS))}")


def dataset_info(name: str) -> dict:
    """The constants describing dataset ``name`` (a copy of e.g. :data:`DIGITS`)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; supported: {', '.join(sorted(DATASETS))}")
    return dict(DATASETS[name])
