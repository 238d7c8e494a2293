"""nsm_train.data: IDX and N-MNIST loaders on small files the tests write; one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nsm_train.data import (DATASETS, FASHION_MNIST_DIR, DatasetError, dataset_info,
                            events_to_frames, load_dataset, read_idx, read_nmnist_events,
                            write_idx, write_nmnist_events)


def _write_set(d: Path, prefix="", n_tr=12, n_te=5, test="t10k", gz=True, n_classes=10, off=0):
    rng = np.random.default_rng(7)
    d.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    x_tr = rng.integers(0, 256, (n_tr, 28, 28), dtype=np.uint8)
    x_te = rng.integers(0, 256, (n_te, 28, 28), dtype=np.uint8)
    y_tr = (np.arange(n_tr) % n_classes + off).astype(np.uint8)
    y_te = (np.arange(n_te) % n_classes + off).astype(np.uint8)
    write_idx(d / f"{prefix}train-images-idx3-ubyte{ext}", x_tr)
    write_idx(d / f"{prefix}train-labels-idx1-ubyte{ext}", y_tr)
    write_idx(d / f"{prefix}{test}-images-idx3-ubyte{ext}", x_te)
    write_idx(d / f"{prefix}{test}-labels-idx1-ubyte{ext}", y_te)
    return x_tr, y_tr, x_te, y_te


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), a)
    assert np.array_equal(read_idx(path), a)


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_mnist_like_loaders(tmp_path, name):
    x_tr, y_tr, x_te, y_te = _write_set(tmp_path, gz=name == "mnist")
    a, b, c, d = load_dataset(name, data_dir=tmp_path)
    assert a.dtype == np.uint8 and a.shape == (12, 784) and c.shape == (5, 784)
    assert np.array_equal(a, x_tr.reshape(12, -1)) and np.array_equal(c, x_te.reshape(5, -1))
    assert b.dtype == np.int64 and np.array_equal(b, y_tr) and np.array_equal(d, y_te)
    assert dataset_info(name)["n_in"] == 784 and dataset_info(name)["shape"] == [1, 28, 28]


def test_emnist_is_transposed_and_letters_start_at_zero(tmp_path):
    x_tr, y_tr, _, _ = _write_set(tmp_path, prefix="emnist-letters-", test="test", n_classes=26,
                                  off=1)
    a, b, _, d = load_dataset("emnist-letters", data_dir=tmp_path)
    assert np.array_equal(a[3].reshape(28, 28), x_tr[3].T)
    assert b.min() == 0 and b.max() <= 25 and np.array_equal(b, y_tr.astype(np.int64) - 1)
    assert DATASETS["emnist-balanced"]["n_classes"] == 47


def test_nmnist_events_and_frames(tmp_path):
    rng = np.random.default_rng(3)
    n = 50
    x, y = rng.integers(0, 34, n), rng.integers(0, 34, n)
    p, t = rng.integers(0, 2, n), np.sort(rng.integers(0, 300000, n))
    f = write_nmnist_events(tmp_path / "00001.bin", x, y, p, t)
    ev = read_nmnist_events(f)
    for k, v in zip("xypt", (x, y, p, t)):
        assert np.array_equal(ev[k], v)
    fr = events_to_frames(ev, frames=3)
    assert fr.shape == (6, 34, 34) and set(np.unique(fr)) <= {0, 1}
    tmax = t.max() + 1
    for i in range(n):
        k = min(t[i] * 3 // tmax, 2)
        assert fr[2 * k + p[i], y[i], x[i]] == 1
    assert fr.sum() == len({(min(t[i] * 3 // tmax, 2), p[i], y[i], x[i]) for i in range(n)})
    # a whole directory
    for split, count in (("Train", 2), ("Test", 1)):
        for label in (0, 7):
            d = tmp_path / "nm" / split / str(label)
            d.mkdir(parents=True)
            for j in range(count):
                write_nmnist_events(d / f"{j:05d}.bin", x, y, p, t + j)
    a, b, c, dd = load_dataset("nmnist", data_dir=tmp_path / "nm")
    assert a.shape == (4, DATASETS["nmnist"]["n_in"]) and c.shape == (2, a.shape[1])
    assert b.tolist() == [0, 0, 7, 7] and dd.tolist() == [0, 7]


def test_missing_and_bad_files_are_one_clear_line(tmp_path):
    cases = [("mnist", tmp_path / "nothing-here", "does not exist"),
             ("mnist", tmp_path, "train-images-idx3-ubyte"),
             ("emnist-digits", tmp_path, "emnist-digits-train-images"),
             ("nmnist", tmp_path, "Train"),
             ("no-such", tmp_path, "supported")]
    for name, d, want in cases:
        with pytest.raises(DatasetError) as e:
            load_dataset(name, data_dir=d)
        assert want in str(e.value) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(DatasetError, match="data_dir"):
        load_dataset("mnist")
    bad = tmp_path / "bad"
    _write_set(bad)
    (bad / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DatasetError) as e:
        load_dataset("fashion-mnist", data_dir=bad)
    assert "\n" not in str(e.value)
    trunc = tmp_path / "t.idx"
    trunc.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(DatasetError, match="9 "):
        read_idx(trunc)
    (tmp_path / "odd.bin").write_bytes(b"123")
    with pytest.raises(DatasetError, match="5-byte"):
        read_nmnist_events(tmp_path / "odd.bin")


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_labels():
    y = read_idx(Path(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))
    assert y.shape == (10000,) and np.array_equal(np.bincount(y), np.full(10, 1000))


def test_corrupt_deflate_stream_is_one_clear_error(tmp_path):
    import gzip

    from nsm_train.data import DatasetError, read_idx

    good = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(range(200)))
    bad = good[:10] + bytes([0xFF] * 12) + good[22:]       # header intact, deflate data not
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(bad)
    with pytest.raises(DatasetError, match="cannot read"):
        read_idx(path)
