import dataclasses
import os

import numpy as np
import pytest

from tfcompress.data import TextSplits, encode_for_bert, load_sst2, sst2_tokenizer
from tfcompress.data import sst2 as sst2_module

TRAIN_ROWS = 67_349
DEV_ROWS = 872
SEQUENCE_LENGTH = 32
VOCABULARY_SIZE = 300
NUM_SENTENCES = 300


@pytest.fixture(autouse=True)
def _no_env_dir(monkeypatch):
    # The default search must not depend on the developer's environment.
    monkeypatch.delenv(sst2_module.ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def full():
    return load_sst2(validation_fraction=0.0)


@pytest.fixture(scope="module")
def sentences(full):
    return full.x_train[:NUM_SENTENCES]


@pytest.fixture(scope="module")
def tokenizer(sentences):
    return sst2_tokenizer(sentences, vocabulary_size=VOCABULARY_SIZE)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _tiny_sst2(folder):
    """Writes a small SST-2 folder in GLUE's layout: sentence first in train.tsv."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"phrase {i} \t{i % 2}\n" for i in range(20))
    _write(folder / "train.tsv", "sentence\tlabel\n" + rows)
    _write(folder / "dev.tsv", "label\tcontent\n1\ta fine film .\n0\ta dull film .\n")
    return folder


# Loading.


def test_finds_shared_folder_and_reads_every_row(full):
    assert isinstance(full, TextSplits)
    assert os.path.isfile(os.path.join(full.data_dir, "train.tsv"))
    assert len(full.x_train) == len(full.y_train) == TRAIN_ROWS
    assert len(full.x_val) == len(full.y_val) == 0
    assert len(full.x_test) == len(full.y_test) == DEV_ROWS
    for x, y in [(full.x_train, full.y_train), (full.x_test, full.y_test)]:
        assert x.dtype == object and all(isinstance(s, str) and s for s in x[:1000])
        assert y.dtype == np.int32
        np.testing.assert_array_equal(np.unique(y), [0, 1])
    assert full.num_classes == 2
    # dev.tsv keeps its file order: its first data row is a negative review.
    assert full.x_test[0] == "one long string of cliches ."
    assert full.y_test[0] == 0


def test_validation_is_carved_from_train(full):
    splits = load_sst2(validation_fraction=0.1, seed=0)
    assert len(splits.x_val) == round(0.1 * TRAIN_ROWS)
    assert len(splits.x_train) + len(splits.x_val) == TRAIN_ROWS
    np.testing.assert_array_equal(splits.x_test, full.x_test)
    # Together the two splits hold exactly the rows of train.tsv.
    pairs = sorted(
        zip(
            np.concatenate([splits.x_train, splits.x_val]),
            np.concatenate([splits.y_train, splits.y_val]),
            strict=True,
        )
    )
    assert pairs == sorted(zip(full.x_train, full.y_train, strict=True))


def test_max_train_is_a_seeded_nested_subset():
    small = load_sst2(max_train=500, seed=3)
    again = load_sst2(max_train=500, seed=3)
    larger = load_sst2(max_train=1000, seed=3)
    other = load_sst2(max_train=500, seed=4)
    assert len(small.x_train) == len(small.y_train) == 500
    np.testing.assert_array_equal(small.x_train, again.x_train)
    np.testing.assert_array_equal(small.y_train, again.y_train)
    np.testing.assert_array_equal(larger.x_train[:500], small.x_train)
    # The validation split does not depend on max_train.
    np.testing.assert_array_equal(larger.x_val, small.x_val)
    assert not np.array_equal(other.x_train, small.x_train)
    assert len(load_sst2(max_train=10**9).x_train) == TRAIN_ROWS - round(0.1 * TRAIN_ROWS)


def test_data_dir_and_env_var(tmp_path, monkeypatch):
    # The header decides the column order (GLUE's train.tsv puts the
    # sentence first); surrounding spaces are stripped.
    folder = _tiny_sst2(tmp_path / "mine")
    splits = load_sst2(data_dir=folder, validation_fraction=0.25)
    assert splits.data_dir == str(folder)
    assert len(splits.x_train) == 15 and len(splits.x_val) == 5
    assert sorted(np.concatenate([splits.x_train, splits.x_val]))[0] == "phrase 0"
    assert list(splits.x_test) == ["a fine film .", "a dull film ."]
    np.testing.assert_array_equal(splits.y_test, [1, 0])

    monkeypatch.setenv(sst2_module.ENV_VAR, str(folder))
    assert load_sst2().data_dir == str(folder)


def test_missing_files_error_names_searched_paths(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_sst2(data_dir=missing)
    message = str(info.value)
    assert str(missing) in message
    assert "train.tsv" in message and "dev.tsv" in message
    assert sst2_module.ENV_VAR in message
    assert "download=True" in message

    # Default search: walk up from the working directory and the package.
    half = tmp_path / "half"
    half.mkdir()
    _write(half / "train.tsv", "label\tsentence\n1\tgood\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sst2_module, "__file__", str(tmp_path / "pkg" / "sst2.py"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with pytest.raises(FileNotFoundError) as info:
        load_sst2()
    message = str(info.value)
    for folder in [
        tmp_path / "shared" / "data" / "sst2",
        tmp_path.parent / "shared" / "data" / "sst2",
        tmp_path / "pkg" / "shared" / "data" / "sst2",
        tmp_path / "keras_home" / "datasets" / "sst2",
    ]:
        assert str(folder) in message

    monkeypatch.setenv(sst2_module.ENV_VAR, str(half))
    with pytest.raises(FileNotFoundError, match="missing dev.tsv"):
        load_sst2()


def test_download_fetches_glue_archive_into_data_dir(tmp_path, monkeypatch):
    import keras

    calls = []

    def fake_get_file(fname, origin, extract, cache_subdir):
        # Stands in for the network: lays out the archive as GLUE's zip does.
        calls.append((fname, origin, extract, cache_subdir))
        _tiny_sst2(tmp_path / "zip" / "SST-2")
        extracted = os.path.join(cache_subdir, "SST-2_extracted")
        os.rename(tmp_path / "zip", extracted)
        return extracted

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    target = tmp_path / "sst2"
    splits = load_sst2(data_dir=target, download=True, validation_fraction=0.0)
    assert calls == [("SST-2.zip", sst2_module.SST2_URL, True, str(target))]
    assert (target / "train.tsv").is_file() and (target / "dev.tsv").is_file()
    assert len(splits.x_train) == 20 and len(splits.x_test) == 2

    # The files stay where the loader looks, so no second download happens.
    assert load_sst2(data_dir=target, download=True).data_dir == str(target)
    assert len(calls) == 1


@pytest.mark.parametrize(
    "train_text, match",
    [
        ("label\tsentence\n1\tgood\n0\tbad\textra\n", r"train\.tsv, line 3: expected 2"),
        ("label\tsentence\n1\tgood\n\n2\tbad\n", r"train\.tsv, line 4: expected the label"),
        ("label,sentence\n1,good\n", r"train\.tsv, line 1: expected a header"),
        ("", r"train\.tsv is empty"),
    ],
)
def test_malformed_file_error_names_file_and_line(tmp_path, train_text, match):
    folder = _tiny_sst2(tmp_path / "bad")
    _write(folder / "train.tsv", train_text)
    with pytest.raises(ValueError, match=match):
        load_sst2(data_dir=folder)


@pytest.mark.parametrize(
    "kwargs", [{"max_train": 0}, {"max_train": 1.5}, {"validation_fraction": 1.0}]
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        load_sst2(**kwargs)


def test_text_splits_is_frozen(full):
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.x_train = None


# Tokenizer and BERT inputs.


def test_tokenizer_round_trip(tokenizer, sentences):
    import keras_hub

    assert isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer)
    vocabulary = tokenizer.get_vocabulary()
    assert 5 < len(vocabulary) <= VOCABULARY_SIZE
    assert vocabulary[:5] == ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    ids = tokenizer(list(sentences[:20]))
    decoded = tokenizer.detokenize(ids)
    for original, text in zip(sentences[:20], decoded, strict=True):
        text = text.numpy().decode() if hasattr(text, "numpy") else str(text)
        # WordPiece drops spaces around punctuation, so compare the words.
        assert text.replace(" ", "") == original.lower().replace(" ", "")


def test_tokenizer_cache_is_written_and_reused(tmp_path, sentences, tokenizer):
    cache = tmp_path / "cache" / "vocab.txt"
    first = sst2_tokenizer(sentences, vocabulary_size=VOCABULARY_SIZE, cache_path=cache)
    written = cache.read_text(encoding="utf-8").split("\n")[:-1]
    assert written == first.get_vocabulary() == tokenizer.get_vocabulary()
    assert [p.name for p in cache.parent.iterdir()] == ["vocab.txt"]  # no temp file left
    mtime = cache.stat().st_mtime_ns

    # A second call reads the file: it does not rewrite it, and it uses its
    # content even when other sentences are given.
    edited = written[:-1] + ["zzzcachedtoken"]
    cache.write_text("".join(t + "\n" for t in edited), encoding="utf-8")
    os.utime(cache, ns=(mtime, mtime))
    second = sst2_tokenizer(["unrelated text"], vocabulary_size=VOCABULARY_SIZE, cache_path=cache)
    assert second.get_vocabulary() == edited
    assert cache.stat().st_mtime_ns == mtime

    with pytest.raises(ValueError, match="more than the requested"):
        sst2_tokenizer(sentences, vocabulary_size=len(edited) - 1, cache_path=cache)


def test_encode_for_bert_shapes_and_values(tokenizer, sentences):
    inputs = encode_for_bert(tokenizer, sentences[:50], sequence_length=SEQUENCE_LENGTH)
    assert set(inputs) == {"token_ids", "segment_ids", "padding_mask"}
    for value in inputs.values():
        assert isinstance(value, np.ndarray)
        assert value.dtype == np.int32
        assert value.shape == (50, SEQUENCE_LENGTH)
    token_ids, mask = inputs["token_ids"], inputs["padding_mask"]
    cls_id, sep_id, pad_id = (tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    assert (token_ids[:, 0] == cls_id).all()
    assert (inputs["segment_ids"] == 0).all()
    np.testing.assert_array_equal(mask, (token_ids != pad_id).astype(np.int32))
    lengths = mask.sum(axis=1)
    assert (token_ids[np.arange(50), lengths - 1] == sep_id).all()
    # Short sentences are padded, long ones truncated to sequence_length.
    raw_lengths = np.array([len(t) for t in tokenizer(list(sentences[:50]))])
    np.testing.assert_array_equal(lengths, np.minimum(raw_lengths + 2, SEQUENCE_LENGTH))
    assert lengths.min() < SEQUENCE_LENGTH and lengths.max() == SEQUENCE_LENGTH


def test_encode_for_bert_rejects_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="sequence_length"):
        encode_for_bert(tokenizer, ["a film"], sequence_length=1)
    with pytest.raises(ValueError, match="single string"):
        encode_for_bert(tokenizer, "a film")


def test_bert_backbone_accepts_encoded_batch(tokenizer, sentences):
    import keras_hub

    inputs = encode_for_bert(tokenizer, sentences[:8], sequence_length=SEQUENCE_LENGTH)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=SEQUENCE_LENGTH,
    )
    outputs = backbone(inputs)
    assert tuple(outputs["sequence_output"].shape) == (8, SEQUENCE_LENGTH, 16)
    assert tuple(outputs["pooled_output"].shape) == (8, 16)
    predicted = backbone.predict(inputs, batch_size=4, verbose=0)
    assert np.isfinite(predicted["pooled_output"]).all()
