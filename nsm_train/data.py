"""Datasets as raw unsigned integer pixels, the same values the hardware streams in.

Every loader returns ``(x_train, y_train, x_test, y_test)`` with ``x`` uint8 of shape (N, n_in)
(row-major ``C×H×W``, see ``shape`` in :func:`dataset_info`) and ``y`` int64 labels ``0..C-1``.

=================  =====================================================================
name               where the data comes from
=================  =====================================================================
``digits``         scikit-learn's 8×8 digits, inside the wheel (stratified split by seed)
``fashion-mnist``  IDX ``.gz`` files of the Debian package ``dataset-fashion-mnist``
                   (``/usr/share/datasets/fashion-mnist``) or ``data_dir``
``mnist``          ``train-images-idx3-ubyte[.gz]`` etc. in ``data_dir``
``emnist-SPLIT``   ``emnist-SPLIT-train-images-idx3-ubyte[.gz]`` etc. in ``data_dir``
                   (SPLIT: balanced, byclass, bymerge, digits, letters, mnist)
``nmnist``         N-MNIST event files ``Train/<label>/*.bin``, ``Test/<label>/*.bin`` in
                   ``data_dir``, turned into ``frames`` binary frames (see :func:`events_to_frames`)
=================  =====================================================================

A dataset that is missing raises :class:`DatasetError` with one line saying how to get it; a
malformed file (bad magic, a header that does not match the data, a truncated or corrupt gzip
stream, non-integer labels, an empty split) one line naming the file. A file is never read
past the size its header declares (at most :data:`MAX_IDX_BYTES`).
"""

from __future__ import annotations

import gzip
import math
import zlib
import os
from pathlib import Path

import numpy as np

__all__ = ["DIGITS", "DATASETS", "DatasetError", "load_digits_split", "load_dataset",
           "dataset_info", "read_idx", "write_idx", "read_nmnist_events", "write_nmnist_events",
           "events_to_frames", "FASHION_MNIST_DIR", "NMNIST_FRAMES"]

#: scikit-learn digits: 1797 images of 8×8 pixels with 17 grey levels (0..16), 10 classes.
DIGITS = dict(name="digits", n_in=64, n_classes=10, pixel_max=16, default_threshold=8,
              shape=[1, 8, 8])
#: Where the Debian package ``dataset-fashion-mnist`` puts its IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: Time bins an N-MNIST recording is cut into (each gives two 34×34 polarity frames).
NMNIST_FRAMES = 4

_MNIST_LIKE = dict(n_in=784, pixel_max=255, default_threshold=128, shape=[1, 28, 28])
_EMNIST_CLASSES = {"balanced": 47, "byclass": 62, "bymerge": 47, "digits": 10, "letters": 26,
                   "mnist": 10}

#: Every dataset :func:`load_dataset` knows, by name.
DATASETS = {
    "digits": DIGITS,
    "fashion-mnist": dict(name="fashion-mnist", n_classes=10, **_MNIST_LIKE),
    "mnist": dict(name="mnist", n_classes=10, **_MNIST_LIKE),
    **{f"emnist-{s}": dict(name=f"emnist-{s}", n_classes=c, **_MNIST_LIKE)
       for s, c in _EMNIST_CLASSES.items()},
    "nmnist": dict(name="nmnist", n_in=NMNIST_FRAMES * 2 * 34 * 34, n_classes=10, pixel_max=1,
                   default_threshold=1, shape=[NMNIST_FRAMES * 2, 34, 34]),
}

#: The most data bytes an IDX file may declare (EMNIST byclass, the largest set, has 547 MB of
#: training images): a header that claims more is refused before anything is read.
MAX_IDX_BYTES = 1 << 31
#: The largest N-MNIST event file read (the recordings are about 40 kB).
MAX_EVENT_BYTES = 1 << 26

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DatasetError(ValueError):
    """An unknown or missing dataset, a malformed file, or unusable dataset arguments."""


# --- scikit-learn digits ------------------------------------------------------------------------

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


# --- IDX files (MNIST, Fashion-MNIST, EMNIST) ---------------------------------------------------

def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed, by its ``.gz`` suffix) into an array."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
                raise DatasetError(f"{path}: not an IDX file (bad magic number)")
            dtype = np.dtype(_IDX_DTYPES[magic[2]])
            ndim = magic[3]
            shape = f.read(4 * ndim)
            if ndim == 0 or len(shape) < 4 * ndim:
                raise DatasetError(f"{path}: truncated IDX header")
            dims = [int.from_bytes(shape[4 * i:4 * i + 4], "big") for i in range(ndim)]
            size = math.prod(dims) * dtype.itemsize
            if size > MAX_IDX_BYTES:
                raise DatasetError(f"{path}: IDX header says {dims} ({size} bytes), more than "
                                   f"the {MAX_IDX_BYTES} this reader takes")
            data = f.read(size + 1)     # one byte more: a longer file is refused below
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if len(data) != size:
        raise DatasetError(f"{path}: IDX header says {dims} ({size} bytes) but the file holds "
                           f"{'more' if len(data) > size else len(data)} bytes of data")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzip-compressed if ``path`` ends in ``.gz``."""
    path = Path(path)
    a = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(head + a.tobytes())
    return path


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _load_idx_set(name: str, directory: Path, prefix: str, how: str, transpose: bool = False,
                  label_offset: int = 0):
    stems = [f"{prefix}train-images-idx3-ubyte", f"{prefix}train-labels-idx1-ubyte",
             f"{prefix}t10k-images-idx3-ubyte" if not prefix else f"{prefix}test-images-idx3-ubyte",
             f"{prefix}t10k-labels-idx1-ubyte" if not prefix else f"{prefix}test-labels-idx1-ubyte"]
    paths = [_find(directory, s) for s in stems]
    missing = [s for s, p in zip(stems, paths) if p is None]
    if missing:
        raise DatasetError(f"{name}: {missing[0]}[.gz] not found in {directory}; {how}")
    x_tr, y_tr, x_te, y_te = (read_idx(p) for p in paths)
    for x, y, px, py in ((x_tr, y_tr, paths[0], paths[1]), (x_te, y_te, paths[2], paths[3])):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DatasetError(f"{px}: expected uint8 images of 28×28, got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise DatasetError(f"{py}: {len(y)} labels for {len(x)} images")
        if y.dtype.kind not in "iu":
            raise DatasetError(f"{py}: labels must be integers, not {y.dtype}")
        if len(x) == 0:
            raise DatasetError(f"{px}: holds no images")
    n_classes = DATASETS[name]["n_classes"]

    def prep(x, y, py):
        if transpose:
            x = x.transpose(0, 2, 1)
        y = y.astype(np.int64) - label_offset
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise DatasetError(f"{py}: labels outside 0..{n_classes - 1}")
        return np.ascontiguousarray(x.reshape(len(x), -1)), y
    x_tr, y_tr = prep(x_tr, y_tr, paths[1])
    x_te, y_te = prep(x_te, y_te, paths[3])
    return x_tr, y_tr, x_te, y_te


# --- N-MNIST events -----------------------------------------------------------------------------

def read_nmnist_events(path) -> np.ndarray:
    """Events of an N-MNIST ``.bin`` file as a structured array with fields x, y, p, t.

    Each event is 40 bits, big-endian: x (8), y (8), polarity (1), timestamp in µs (23).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = np.frombuffer(f.read(MAX_EVENT_BYTES + 1), dtype=np.uint8)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if raw.size > MAX_EVENT_BYTES:
        raise DatasetError(f"{path}: more than {MAX_EVENT_BYTES} bytes; not an N-MNIST recording")
    if raw.size % 5:
        raise DatasetError(f"{path}: {raw.size} bytes is not a whole number of 5-byte events")
    ev = raw.reshape(-1, 5).astype(np.uint32)
    out = np.empty(len(ev), dtype=[("x", np.int64), ("y", np.int64), ("p", np.int64),
                                   ("t", np.int64)])
    out["x"], out["y"] = ev[:, 0], ev[:, 1]
    out["p"] = ev[:, 2] >> 7
    out["t"] = ((ev[:, 2] & 0x7F) << 16) | (ev[:, 3] << 8) | ev[:, 4]
    return out


def write_nmnist_events(path, x, y, p, t) -> Path:
    """Write events in the N-MNIST ``.bin`` format (the inverse of :func:`read_nmnist_events`)."""
    x, y, p, t = (np.asarray(v, dtype=np.int64) for v in (x, y, p, t))
    raw = np.stack([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF], axis=1)
    Path(path).write_bytes(raw.astype(np.uint8).tobytes())
    return Path(path)


def events_to_frames(events: np.ndarray, frames: int = NMNIST_FRAMES, size: int = 34) -> np.ndarray:
    """Binary frames (uint8, (frames·2, size, size)): 1 where a pixel saw an event of a polarity.

    The recording ``[0, t_max]`` is cut into ``frames`` equal time bins; frame ``2·k + pol``
    holds bin ``k`` and polarity ``pol``. Events outside the sensor are dropped.
    """
    out = np.zeros((frames * 2, size, size), dtype=np.uint8)
    if len(events) == 0:
        return out
    ok = (events["x"] < size) & (events["y"] < size)
    ev = events[ok]
    t_max = int(events["t"].max()) + 1
    k = np.minimum(ev["t"] * frames // t_max, frames - 1)
    out[2 * k + ev["p"], ev["y"], ev["x"]] = 1
    return out


def _load_nmnist(directory: Path, frames: int = NMNIST_FRAMES):
    how = ("N-MNIST: put the extracted Train/ and Test/ folders (Train/<digit>/*.bin) in a "
           "directory and pass it as data_dir (nsm train --data-dir DIR)")
    out = []
    for split in ("Train", "Test"):
        root = directory / split
        if not root.is_dir():
            raise DatasetError(f"nmnist: {root} not found; {how}")
        xs, ys = [], []
        for label in range(10):
            for f in sorted((root / str(label)).glob("*.bin")):
                xs.append(events_to_frames(read_nmnist_events(f), frames).reshape(-1))
                ys.append(label)
        if not xs:
            raise DatasetError(f"nmnist: no .bin files under {root}/<digit>/; {how}")
        out += [np.stack(xs), np.asarray(ys, dtype=np.int64)]
    return tuple(out)


# --- entry points -------------------------------------------------------------------------------

def load_dataset(name: str, seed: int = 0, test_fraction: float = 0.2, data_dir=None):
    """Load a dataset by name (see :data:`DATASETS` and the module docstring).

    Returns ``(x_train, y_train, x_test, y_test)``. ``seed`` and ``test_fraction`` only matter for
    ``digits`` (the others have an official test split). ``data_dir`` overrides where the files
    are looked for (also settable with the environment variable ``NSM_DATA_DIR``). An unknown or
    missing dataset raises :class:`DatasetError` with one line.
    """
    if name == "digits":
        return load_digits_split(seed=seed, test_fraction=test_fraction)
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; supported: {', '.join(sorted(DATASETS))}")
    if data_dir is None:
        data_dir = os.environ.get("NSM_DATA_DIR")
    if name == "fashion-mnist":
        d = Path(data_dir) if data_dir else Path(FASHION_MNIST_DIR)
        return _load_idx_set(name, d, "", "install it with `apt-get install dataset-fashion-mnist`"
                             " or pass data_dir (nsm train --data-dir DIR) holding the IDX files")
    if data_dir is None:
        raise DatasetError(f"{name}: no data directory given; download the IDX/event files and "
                           f"pass their directory as data_dir (nsm train --data-dir DIR)")
    d = Path(data_dir)
    if not d.is_dir():
        raise DatasetError(f"{name}: data directory {d} does not exist")
    if name == "mnist":
        return _load_idx_set(name, d, "", "download MNIST's four IDX files into that directory")
    if name.startswith("emnist-"):
        split = name[len("emnist-"):]
        return _load_idx_set(name, d, f"emnist-{split}-",
                             "download EMNIST (gzip/ folder of the NIST release) into that "
                             "directory", transpose=True,
                             label_offset=1 if split == "letters" else 0)
    return _load_nmnist(d)


def dataset_info(name: str) -> dict:
    """The constants describing dataset ``name`` (a copy of e.g. :data:`DIGITS`)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; supported: {', '.join(sorted(DATASETS))}")
    info = dict(DATASETS[name])
    info["shape"] = list(info["shape"])
    return info
