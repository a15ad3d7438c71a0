"""Loading a recipe's model and data."""

import dataclasses
import importlib
import os

import numpy as np

from tfcompress.pipeline.recipe import RecipeError


@dataclasses.dataclass
class PipelineData:
    """Train / validation / test splits; inputs are arrays or dicts of arrays."""

    x_train: object
    y_train: np.ndarray
    x_val: object
    y_val: np.ndarray
    x_test: object
    y_test: np.ndarray
    description: str

    @property
    def num_classes(self):
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def call_factory(spec, what):
    """Import `module:function` and call it with `kwargs`, with errors that name it."""
    module_name, _, attr = spec.rpartition(":") if ":" in spec else ("", "", spec)
    try:
        target = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as e:
        raise RecipeError(f"The {what} factory '{spec}' cannot be imported: {e}. Check the "
                          "module is importable (on PYTHONPATH) and the name is right.") from None
    return target


def build_from_factory(spec, kwargs, what):
    function = call_factory(spec, what)
    try:
        return function(**kwargs)
    except Exception as e:
        raise RecipeError(f"The {what} factory '{spec}' raised {type(e).__name__}: {e}") from e


def load_model(spec):
    """The recipe's starting model."""
    if spec.path is not None:
        if not os.path.exists(spec.path):
            raise RecipeError(f"The model path '{spec.path}' does not exist.")
        import keras

        from tfcompress.pipeline.stages import register_custom_layers

        register_custom_layers()
        return keras.saving.load_model(spec.path)
    return build_from_factory(spec.factory, dict(spec.kwargs), "model")


def load_data(spec, seed=0, cache_dir=None):
    """The recipe's data as `PipelineData`."""
    if spec.embedded == "digits":
        from tfcompress.data import load_digits

        d = load_digits(seed=seed)
        return PipelineData(d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test,
                            "scikit-learn digits (1,797 real 8x8 images)")
    if spec.embedded == "sst2":
        return _load_sst2(spec, seed, cache_dir)
    if spec.npz is not None:
        return _load_npz(spec.npz)
    result = build_from_factory(spec.factory, dict(spec.kwargs), "data")
    try:
        return PipelineData(result.x_train, np.asarray(result.y_train), result.x_val,
                            np.asarray(result.y_val), result.x_test, np.asarray(result.y_test),
                            f"from {spec.factory}")
    except AttributeError as e:
        raise RecipeError(f"The data factory '{spec.factory}' must return an object with "
                          f"x_train, y_train, x_val, y_val, x_test, y_test: {e}") from None


def _load_npz(path):
    if not os.path.isfile(path):
        raise RecipeError(f"The data file '{path}' does not exist.")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
        if missing:
            raise RecipeError(f"The data file '{path}' lacks arrays {missing}; it has "
                              f"{sorted(f.keys())}.")
        x_val = f["x_val"] if "x_val" in f else f["x_test"]
        y_val = f["y_val"] if "y_val" in f else f["y_test"]
        return PipelineData(f["x_train"], f["y_train"], x_val, y_val, f["x_test"], f["y_test"],
                            f"arrays from {path}")


def _load_sst2(spec, seed, cache_dir):
    from tfcompress.data import encode_for_bert, load_sst2, sst2_tokenizer

    splits = load_sst2(max_train=spec.max_train or 4000, seed=seed)
    vocab = os.path.join(cache_dir, "vocabulary.txt") if cache_dir else None
    tokenizer = sst2_tokenizer(splits.x_train, vocabulary_size=spec.vocabulary_size,
                               cache_path=vocab)
    n_val = min(len(splits.x_val), 1000)

    def encode(x):
        return encode_for_bert(tokenizer, x, sequence_length=spec.sequence_length)

    return PipelineData(encode(splits.x_train), splits.y_train, encode(splits.x_val[:n_val]),
                        splits.y_val[:n_val], encode(splits.x_test), splits.y_test,
                        f"SST-2 ({len(splits.x_train)} training sentences, dev as test)")
