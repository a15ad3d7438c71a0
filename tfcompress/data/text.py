"""WordPiece vocabularies and BERT inputs for text classification data."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras_hub

# The reserved tokens of `compute_word_piece_vocabulary`, in BERT's order.
_RESERVED_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
_ENCODE_BATCH_SIZE = 1024


def sst2_tokenizer(
    sentences: Sequence[str],
    vocabulary_size: int = 8000,
    cache_path: str | os.PathLike | None = None,
    lowercase: bool = True,
) -> keras_hub.tokenizers.BertTokenizer:
    """Builds a WordPiece tokenizer for a from-scratch BERT.

    The vocabulary is learned from `sentences` with
    `keras_hub.tokenizers.compute_word_piece_vocabulary` and starts with
    BERT's reserved tokens `[PAD] [CLS] [SEP] [UNK] [MASK]`. Learning it over
    SST-2's full training split takes about 45 seconds, so pass `cache_path`
    to keep it: the vocabulary is written there (one token per line, the
    format `WordPieceTokenizer(vocabulary=path)` reads) and, when that file
    already exists, read back instead of being learned again. The cache is
    keyed by its path only; delete the file after changing `sentences`,
    `vocabulary_size` or `lowercase`.

    Args:
        sentences: sequence of `str` (a list or a NumPy array), typically the
            training sentences only, e.g. `load_sst2().x_train`.
        vocabulary_size: int. Largest vocabulary size, reserved tokens
            included; small corpora may give fewer tokens. Defaults to `8000`.
        cache_path: str or path-like, optional. Vocabulary file to reuse or
            to write. Written atomically, so a crash never leaves half a
            file. Defaults to `None` (no cache).
        lowercase: bool. Lowercase text before learning the vocabulary and
            before tokenizing. Defaults to `True`.

    Returns:
        A `keras_hub.tokenizers.BertTokenizer` (a `WordPieceTokenizer` that
        also exposes `cls_token_id`, `sep_token_id` and `pad_token_id`) whose
        call maps a batch of strings to ragged int32 token ids.

    Example:

    ```python
    splits = tfcompress.data.load_sst2()
    tokenizer = tfcompress.data.sst2_tokenizer(
        splits.x_train, vocabulary_size=8000, cache_path="out/sst2_vocab.txt"
    )
    tokenizer.vocabulary_size()  # at most 8000
    ```
    """
    if isinstance(vocabulary_size, bool) or not isinstance(vocabulary_size, int):
        raise ValueError(
            f"`vocabulary_size` must be an integer. Received: vocabulary_size={vocabulary_size!r}."
        )
    if vocabulary_size <= len(_RESERVED_TOKENS):
        raise ValueError(
            f"`vocabulary_size` must exceed the {len(_RESERVED_TOKENS)} reserved tokens "
            f"{list(_RESERVED_TOKENS)}. Received: vocabulary_size={vocabulary_size}."
        )

    import keras_hub

    if cache_path is not None and os.path.exists(cache_path):
        vocabulary = _read_vocabulary(os.fspath(cache_path), vocabulary_size)
    else:
        vocabulary = _learn_vocabulary(sentences, vocabulary_size, lowercase)
        if cache_path is not None:
            _write_atomically(os.fspath(cache_path), vocabulary)
    return keras_hub.tokenizers.BertTokenizer(vocabulary=vocabulary, lowercase=lowercase)


def encode_for_bert(
    tokenizer: keras_hub.tokenizers.Tokenizer, sentences: Sequence[str], sequence_length: int = 32
) -> dict[str, np.ndarray]:
    """Tokenizes and packs sentences into the inputs of a BERT backbone.

    Each sentence becomes `[CLS] tokens... [SEP]`, truncated or padded with
    `[PAD]` to `sequence_length`, by `keras_hub.layers.MultiSegmentPacker`
    (the packer keras-hub's BERT preprocessors use).

    Args:
        tokenizer: a `keras_hub.tokenizers.WordPieceTokenizer` whose
            vocabulary holds `[CLS]`, `[SEP]` and `[PAD]`, e.g. from
            `sst2_tokenizer`.
        sentences: sequence of `str` (a list or a NumPy array).
        sequence_length: int, at least 2. Length of every packed sequence;
            the backbone's `max_sequence_length` must be at least this.
            Defaults to `32`.

    Returns:
        A dict of int32 NumPy arrays of shape `(len(sentences),
        sequence_length)`: `"token_ids"`, `"segment_ids"` (all 0 for single
        sentences) and `"padding_mask"` (1 for real tokens, 0 for padding),
        the inputs `keras_hub.models.BertBackbone` declares.

    Example:

    ```python
    x_train = tfcompress.data.encode_for_bert(tokenizer, splits.x_train, 32)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_heads=2,
        hidden_dim=128, intermediate_dim=512, max_sequence_length=32,
    )
    outputs = backbone(x_train)
    ```
    """
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int):
        raise ValueError(
            f"`sequence_length` must be an integer. Received: sequence_length={sequence_length!r}."
        )
    if sequence_length < 2:
        raise ValueError(
            "`sequence_length` must be at least 2 to hold [CLS] and [SEP]. "
            f"Received: sequence_length={sequence_length}."
        )

    import keras_hub
    import tensorflow as tf

    special = {}
    for token in ("[CLS]", "[SEP]", "[PAD]"):
        try:
            special[token] = int(tokenizer.token_to_id(token))
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"The tokenizer's vocabulary has no {token} token, which BERT inputs need. "
                "Build the tokenizer with `sst2_tokenizer` or include [PAD], [CLS] and "
                "[SEP] in its vocabulary."
            ) from e
    pad_id = special["[PAD]"]

    packer = keras_hub.layers.MultiSegmentPacker(
        sequence_length=sequence_length,
        start_value=special["[CLS]"],
        end_value=special["[SEP]"],
        pad_value=pad_id,
    )

    def pack(texts):
        token_ids = tokenizer(texts)
        if not isinstance(token_ids, tf.RaggedTensor):
            # A tokenizer built with `sequence_length` pads; drop that padding.
            token_ids = tf.RaggedTensor.from_tensor(token_ids, padding=pad_id)
        return packer(token_ids)

    # Run in a `tf.data` graph, in batches: called eagerly, keras-hub layers
    # turn ragged outputs into Python lists.
    texts = tf.constant(_as_str_list(sentences), dtype=tf.string)
    batches = tf.data.Dataset.from_tensor_slices(texts).batch(_ENCODE_BATCH_SIZE).map(pack)
    token_ids = [np.zeros((0, sequence_length), np.int32)]
    segment_ids = [np.zeros((0, sequence_length), np.int32)]
    for batch_token_ids, batch_segment_ids in batches.as_numpy_iterator():
        token_ids.append(batch_token_ids.astype(np.int32))
        segment_ids.append(batch_segment_ids.astype(np.int32))
    packed = np.concatenate(token_ids)
    return {
        "token_ids": packed,
        "segment_ids": np.concatenate(segment_ids),
        "padding_mask": np.not_equal(packed, pad_id).astype(np.int32),
    }


def _as_str_list(sentences):
    if isinstance(sentences, (str, bytes)):
        raise ValueError(
            "`sentences` must be a sequence of strings, not a single string. "
            f"Received: {sentences[:40]!r}. Wrap it in a list."
        )
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in sentences]


def _learn_vocabulary(sentences, vocabulary_size, lowercase):
    import keras_hub
    import tensorflow as tf

    texts = _as_str_list(sentences)
    if not texts:
        raise ValueError("`sentences` is empty; a vocabulary needs at least one sentence.")
    data = tf.data.Dataset.from_tensor_slices(tf.constant(texts, dtype=tf.string)).batch(1024)
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        data,
        vocabulary_size=vocabulary_size,
        lowercase=lowercase,
        reserved_tokens=list(_RESERVED_TOKENS),
    )
    return list(vocabulary)


def _read_vocabulary(path, vocabulary_size):
    with open(path, encoding="utf-8") as f:
        # Split on "\n" only: `splitlines` would also split on rare Unicode
        # separators that can be tokens.
        vocabulary = f.read().split("\n")
    if vocabulary and vocabulary[-1] == "":
        vocabulary.pop()
    missing = [t for t in _RESERVED_TOKENS if t not in vocabulary]
    if missing:
        raise ValueError(
            f"The cached vocabulary {path} lacks the reserved tokens {missing}. "
            "It is not a vocabulary written by `sst2_tokenizer`; delete it or pass "
            "another `cache_path` to learn a new one."
        )
    if len(vocabulary) > vocabulary_size:
        raise ValueError(
            f"The cached vocabulary {path} has {len(vocabulary)} tokens, more than the "
            f"requested vocabulary_size={vocabulary_size}. Delete it or pass another "
            "`cache_path` to learn a vocabulary of the requested size."
        )
    return vocabulary


def _write_atomically(path, vocabulary):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(token + "\n" for token in vocabulary))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o644)  # `mkstemp` creates the file private (0o600).
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
