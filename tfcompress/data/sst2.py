"""GLUE's SST-2 binary sentiment task, read from local TSV files."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

ENV_VAR = "TFCOMPRESS_SST2_DIR"
SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
_FILES = ("train.tsv", "dev.tsv")
_LABEL_COLUMN = "label"
# GLUE names the text column `sentence`; some copies of dev.tsv use `content`.
_TEXT_COLUMNS = ("sentence", "content")


@dataclasses.dataclass(frozen=True, eq=False)
class TextSplits:
    """Train, validation and test sentences with their integer labels.

    `x_*` are 1-D NumPy object arrays of Python `str`; `y_*` are int32
    arrays. For SST-2, `x_test`/`y_test` come from GLUE's `dev.tsv`, the
    held-out split that published results report on.

    Example:

    ```python
    splits = tfcompress.data.load_sst2(max_train=8000)
    splits.x_train[0], splits.y_train[0]
    splits.num_classes  # 2
    ```
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    data_dir: str

    @property
    def num_classes(self) -> int:
        """Number of classes: one more than the largest label in any split."""
        labels = np.concatenate([self.y_train, self.y_val, self.y_test])
        return int(labels.max()) + 1


def load_sst2(
    data_dir: str | os.PathLike | None = None,
    max_train: int | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    download: bool = False,
) -> TextSplits:
    """Loads GLUE's SST-2 (binary movie-review sentiment) from local files.

    Reads `train.tsv` and `dev.tsv` (TAB separated, one header line with a
    `label` column and a `sentence` or `content` column, in either order).
    The folder is, in order of precedence:

    1. `data_dir`, when given;
    2. else the folder named by the environment variable
       `TFCOMPRESS_SST2_DIR`, when set;
    3. else the first `shared/data/sst2` folder found beside the current
       working directory or the installed package, or any of their parent
       folders, and finally `~/.keras/datasets/sst2` (or
       `$KERAS_HOME/datasets/sst2`), where `download=True` puts the files.

    `dev.tsv` (872 sentences) becomes the test split: it is the standard
    held-out set of published SST-2 results. The validation split is carved
    out of `train.tsv` (67,349 phrases) with a seeded shuffle and does not
    depend on `max_train`. Note that SST-2's training phrases are
    overlapping fragments of the same reviews, so validation accuracy is
    optimistic; report the test (dev) accuracy.

    Args:
        data_dir: str or path-like, optional. Folder holding `train.tsv` and
            `dev.tsv`. Defaults to `None` (search as described above).
        max_train: int, optional. Keep only a seeded random subset of this
            many training sentences (all of them if the split is smaller).
            Subsets with the same seed are nested: the first 8,000 of a
            16,000 subset are the 8,000 subset. Defaults to `None` (all).
        validation_fraction: float in [0, 1). Fraction of `train.tsv` held
            out for validation; `0` gives empty validation arrays. Defaults
            to `0.1`.
        seed: int. Seed of the validation split and the `max_train` subset.
            Defaults to `0`.
        download: bool. If `True` and the files are not found, fetch GLUE's
            SST-2 archive from `SST2_URL` (needs internet access) into
            `data_dir`, else the `TFCOMPRESS_SST2_DIR` folder, else
            `~/.keras/datasets/sst2`. Defaults to `False`.

    Returns:
        A `TextSplits` with `x_train, y_train, x_val, y_val, x_test, y_test`
        (sentences as NumPy object arrays of `str`, labels as int32 arrays
        with 0 = negative, 1 = positive) and `data_dir`, the folder read.

    Raises:
        FileNotFoundError: if no searched folder holds both files and
            `download` is `False`. The message lists the folders searched.
        ValueError: if a file is malformed; the message names the file and
            line.

    Example:

    ```python
    splits = tfcompress.data.load_sst2(max_train=16000, seed=0)
    tokenizer = tfcompress.data.sst2_tokenizer(splits.x_train, vocabulary_size=8000)
    x_train = tfcompress.data.encode_for_bert(tokenizer, splits.x_train)
    model.fit(x_train, splits.y_train)
    ```
    """
    if max_train is not None and (
        isinstance(max_train, bool) or not isinstance(max_train, int) or max_train < 1
    ):
        raise ValueError(
            f"`max_train` must be a positive integer or `None`. Received: max_train={max_train!r}."
        )
    if (
        isinstance(validation_fraction, bool)
        or not isinstance(validation_fraction, (int, float))
        or not 0 <= validation_fraction < 1
    ):
        raise ValueError(
            "`validation_fraction` must be a float in [0, 1). "
            f"Received: validation_fraction={validation_fraction!r}."
        )

    candidates, source = _candidate_dirs(data_dir)
    found = next((d for d in candidates if _has_files(d)), None)
    if found is None:
        if not download:
            raise FileNotFoundError(_not_found_message(candidates, source))
        target = candidates[0] if source else _keras_cache_dir()
        found = _download(target)

    sentences, labels = _read_tsv(os.path.join(found, "train.tsv"))
    x_test, y_test = _read_tsv(os.path.join(found, "dev.tsv"))

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    num_val = int(round(validation_fraction * len(labels)))
    val_idx, train_idx = order[:num_val], order[num_val:]
    if max_train is not None:
        train_idx = train_idx[:max_train]

    return TextSplits(
        x_train=sentences[train_idx],
        y_train=labels[train_idx],
        x_val=sentences[val_idx],
        y_val=labels[val_idx],
        x_test=x_test,
        y_test=y_test,
        data_dir=found,
    )


def _candidate_dirs(data_dir):
    """Returns `(folders to search, "data_dir", ENV_VAR or None for the defaults)`."""
    if data_dir is not None:
        return [os.path.abspath(os.fspath(data_dir))], "data_dir"
    env_dir = os.environ.get(ENV_VAR)
    if env_dir:
        return [os.path.abspath(os.path.expanduser(env_dir))], ENV_VAR

    candidates = []
    for start in (os.getcwd(), os.path.dirname(os.path.abspath(__file__))):
        folder = start
        while True:
            candidate = os.path.join(folder, "shared", "data", "sst2")
            if candidate not in candidates:
                candidates.append(candidate)
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    candidates.append(_keras_cache_dir())
    return candidates, None


def _keras_cache_dir():
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(keras_home, "datasets", "sst2")


def _has_files(folder):
    return all(os.path.isfile(os.path.join(folder, name)) for name in _FILES)


def _not_found_message(candidates, source):
    lines = []
    for folder in candidates:
        if not os.path.isdir(folder):
            note = "folder does not exist"
        else:
            missing = [n for n in _FILES if not os.path.isfile(os.path.join(folder, n))]
            note = "missing " + " and ".join(missing)
        lines.append(f"  - {folder} ({note})")
    if source == "data_dir":
        where = (
            "Put both files there, or pass as `data_dir` the folder that holds them "
            f"(or leave `data_dir=None` and set the environment variable {ENV_VAR})."
        )
    elif source == ENV_VAR:
        where = (
            f"That folder comes from the environment variable {ENV_VAR}: put both "
            "files there, or point the variable (or `data_dir=`) at the folder that "
            "holds them."
        )
    else:
        where = (
            "Put both files in one of these folders, or pass `data_dir=` or set the "
            f"environment variable {ENV_VAR} to the folder that holds them."
        )
    return (
        "Could not find SST-2's `train.tsv` and `dev.tsv` (TAB separated, with a "
        "`label<TAB>sentence` header line). Searched:\n"
        + "\n".join(lines)
        + f"\n{where} On a machine with internet access, `load_sst2(download=True)` "
        f"fetches GLUE's SST-2 from {SST2_URL}."
    )


def _download(target_dir):
    """Fetches GLUE's SST-2 archive and moves its two TSV files to `target_dir`."""
    import keras

    target_dir = os.path.abspath(target_dir)
    os.makedirs(target_dir, exist_ok=True)
    # An absolute `cache_subdir` makes `get_file` download and extract there.
    extracted = keras.utils.get_file(
        fname="SST-2.zip",
        origin=SST2_URL,
        extract=True,
        cache_subdir=target_dir,
    )
    for root, _, files in os.walk(extracted):
        if all(name in files for name in _FILES):
            for name in _FILES:
                os.replace(os.path.join(root, name), os.path.join(target_dir, name))
            return target_dir
    raise FileNotFoundError(
        f"Downloaded {SST2_URL} and extracted it to {extracted}, but found no folder "
        f"holding both {' and '.join(_FILES)} there. Download the archive by hand and "
        f"put the two files in {target_dir}."
    )


def _read_tsv(path):
    """Reads one SST-2 TSV file into (object array of str, int32 array)."""
    try:
        return _read_utf8_tsv(path)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {e.start}: {e.reason}). Save it as UTF-8."
        ) from None


def _read_utf8_tsv(path):
    with open(path, encoding="utf-8-sig") as f:
        header = f.readline()
        if not header:
            raise ValueError(
                f"{path} is empty. Expected a header line `label<TAB>sentence` followed "
                "by one `label<TAB>sentence` row per example."
            )
        header = header.rstrip("\r\n")
        columns = [c.strip().lower() for c in header.split("\t")]
        text_columns = [c for c in columns if c in _TEXT_COLUMNS]
        if len(columns) != 2 or _LABEL_COLUMN not in columns or len(text_columns) != 1:
            raise ValueError(
                f"{path}, line 1: expected a header with two TAB-separated columns, "
                f"`label` and `sentence` (or `content`), in either order. Received: "
                f"{header!r}. Check that this is GLUE's "
                "SST-2 file and that it is TAB separated."
            )
        label_col = columns.index(_LABEL_COLUMN)
        text_col = columns.index(text_columns[0])

        sentences, labels = [], []
        for line_number, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(
                    f"{path}, line {line_number}: expected 2 TAB-separated fields "
                    f"({columns[0]}, {columns[1]}); received {len(fields)}: {line[:80]!r}. "
                    "Fix or remove this line."
                )
            label = fields[label_col].strip()
            if label not in ("0", "1"):
                raise ValueError(
                    f"{path}, line {line_number}: expected the label 0 or 1; received "
                    f"{label[:40]!r}. Fix or remove this line."
                )
            labels.append(int(label))
            sentences.append(fields[text_col].strip())
    if not labels:
        raise ValueError(f"{path} has a header line but no data rows.")

    x = np.empty(len(sentences), dtype=object)
    x[:] = sentences
    return x, np.asarray(labels, dtype=np.int32)
