"""Loading a recipe's model and data: safely, and checked before anything trains.

Code named by a file runs only when the caller trusts it, as Keras's
`safe_mode` and Hugging Face's `trust_remote_code` do: a recipe `factory:`
outside `tfcompress.*` and a `.h5` model (tf_keras has no safe mode) need
`trust_code=True` (`--trust-code` on the command line).
"""

import contextlib
import contextvars
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import zipfile

import numpy as np

from tfcompress.errors import InvalidModelFileError, UntrustedCodeError
from tfcompress.pipeline.recipe import RecipeError

#: The factories that run without `trust_code`: tfcompress's own model builders and the
#: bundled digits. Anything else needs trust, other tfcompress functions included: some
#: write files (`sst2_tokenizer(cache_path=...)`) or run code (`run_on_logical_cpus`).
TRUSTED_FACTORIES = frozenset(
    {
        "tfcompress.testing:digits_cnn",
        "tfcompress.testing:tf_keras_digits_cnn",
        "tfcompress.testing:tiny_mlp",
        "tfcompress.testing:tiny_bert_classifier",
        "tfcompress.testing:zoo_model",
        "tfcompress.data:load_digits",
    }
)

_TRUST = contextvars.ContextVar("tfcompress_trust_code", default=False)


class DataError(RecipeError):
    """The recipe's data cannot train the model: empty, NaN, labels that do not fit."""


@contextlib.contextmanager
def trusting(trust_code):
    """Within the block, factories and `.h5` files load without `trust_code=True`.

    Example:

    >>> with trusting(True):
    ...     model = load_model(recipe.model)
    """
    if trust_code is None:  # keep what an enclosing block decided
        yield
        return
    token = _TRUST.set(bool(trust_code))
    try:
        yield
    finally:
        _TRUST.reset(token)


def _trusted(trust_code):
    return _TRUST.get() if trust_code is None else bool(trust_code)


def _is_trusted(module_name, attr):
    return f"{module_name}:{attr}" in TRUSTED_FACTORIES


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


def check_factory(spec, what, trust_code=None):
    """Import `module:function` without calling it; refuse untrusted code.

    Args:
        spec: `"module:function"`.
        what: what the factory builds ("model", "data", "student"), for messages.
        trust_code: allow modules outside `tfcompress.*`; `None` uses the
            enclosing `trusting(...)` block (default: not trusted).

    Returns:
        The callable.

    Raises:
        UntrustedCodeError: the module is outside `tfcompress.*` and code is not trusted.
        RecipeError: the module or the name cannot be found.
    """
    module_name, _, attr = spec.rpartition(":") if ":" in spec else ("", "", spec)
    if not _is_trusted(module_name, attr) and not _trusted(trust_code):
        raise UntrustedCodeError(
            f"The recipe's {what} factory would import the Python module '{module_name}' and "
            f"call '{attr}(...)': code other than tfcompress's model builders "
            "(tfcompress.pipeline.data.TRUSTED_FACTORIES) runs only when you trust the recipe. "
            "Pass --trust-code (trust_code=True in Python) if you wrote it or trust its "
            f"author. Received: factory={spec!r}"
        )
    try:
        if importlib.util.find_spec(module_name) is None:
            raise ImportError(f"No module named '{module_name}'")
        target = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise RecipeError(
            f"The {what} factory '{spec}' cannot be imported: {e}. Check the "
            "module is importable (on PYTHONPATH) and the name is right."
        ) from None
    if not callable(target):
        raise RecipeError(
            f"The {what} factory '{spec}' is a {type(target).__name__}, not a "
            "function. Name a function that returns the "
            f"{what}. Received: factory={spec!r}"
        )
    return target


def call_factory(spec, what, trust_code=None):
    """Import `module:function` (see `check_factory`); kept for callers of the old name."""
    return check_factory(spec, what, trust_code)


def check_recipe_code(recipe, trust_code=None):
    """Import every factory a recipe names, before any data is loaded.

    Raises:
        UntrustedCodeError / RecipeError: as `check_factory`, for the first bad one.
    """
    if recipe.model.factory is not None:
        check_factory(recipe.model.factory, "model", trust_code)
    if recipe.model.path is not None:
        check_model_file(recipe.model.path, trust_code)
    if recipe.data.factory is not None:
        check_factory(recipe.data.factory, "data", trust_code)
    for stage in recipe.stages:
        student = getattr(stage, "student", None)
        if student is not None:
            check_factory(student.factory, "student", trust_code)


def _is_model(obj):
    import keras

    if isinstance(obj, keras.Model):
        return True
    try:
        import tf_keras

        return isinstance(obj, tf_keras.Model)
    except ImportError:  # pragma: no cover - tf_keras is a dependency
        return False


def build_from_factory(spec, kwargs, what, trust_code=None):
    """Call a factory with `kwargs`; the result must be a Keras model."""
    function = check_factory(spec, what, trust_code)
    try:
        result = function(**kwargs)
    except Exception as e:
        raise RecipeError(f"The {what} factory '{spec}' raised {type(e).__name__}: {e}") from e
    if what in ("model", "student") and not _is_model(result):
        raise RecipeError(
            f"The {what} factory '{spec}' must return a Keras model; it returned "
            f"a {type(result).__name__}. Received: {_short(result)}"
        )
    return result


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- model files


def _h5_code(path):
    """What loading an `.h5` model would run: Lambda layers and custom classes."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config")
    except Exception as e:
        raise InvalidModelFileError(
            f"'{path}' is not a readable HDF5 model file ({type(e).__name__}: {e}). Save the "
            f"model again. Received: path={path!r}"
        ) from None
    if config is None:
        raise InvalidModelFileError(
            f"'{path}' is an HDF5 file without a model config (weights only?). Save the whole "
            f"model with model.save(). Received: path={path!r}"
        )
    if isinstance(config, bytes):
        config = config.decode("utf-8", "replace")
    return _lambda_layers(config)


def _lambda_layers(config_text):
    """`["Lambda layer 'name'", ...]` for every Lambda layer in a model config (JSON)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                config = node.get("config")
                name = config.get("name", "?") if isinstance(config, dict) else "?"
                found.append(f"Lambda layer '{name}'")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    try:
        walk(json.loads(config_text))
    except ValueError:
        pass
    return found


def check_model_file(path, trust_code=None):
    """Check a model file before loading it: present, the right container, and safe.

    Raises:
        InvalidModelFileError: missing, empty, truncated or not a model.
        UntrustedCodeError: an `.h5` file without `trust_code`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidModelFileError(
            f"No model file at '{path}'. Check the path. Received: path={path!r}"
        )
    if path.endswith(".keras"):
        problem = None
        if not zipfile.is_zipfile(path):
            problem = (
                f"it is {os.path.getsize(path)} bytes and not a zip archive "
                "(empty, truncated, or another format)"
            )
        else:
            try:
                with zipfile.ZipFile(path) as z:
                    names = set(z.namelist())
                    bad = z.testzip()
                if "config.json" not in names:
                    problem = "the archive has no config.json"
                elif bad is not None:
                    problem = f"the archive member '{bad}' is corrupt"
            except (zipfile.BadZipFile, OSError, RuntimeError, ValueError) as e:
                problem = f"the archive is unreadable ({e})"
        if problem:
            raise InvalidModelFileError(
                f"'{path}' is not a valid .keras model: {problem}. Save the model again with "
                f"model.save('model.keras'). Received: path={path!r}"
            )
        return
    if path.endswith((".h5", ".hdf5")):
        code = _h5_code(path)
        if not _trusted(trust_code):
            what = ", ".join(code) if code else "any Lambda layer or custom object it holds"
            raise UntrustedCodeError(
                f"'{path}' is an HDF5 model: tf_keras loads it with no safe mode, so its "
                f"config could run Python code ({what}). Pass --trust-code (trust_code=True) "
                "only if you trust the file's author, or re-save it as .keras. "
                f"Received: path={path!r}"
            )
        return
    raise InvalidModelFileError(
        f"'{path}' is not a .keras or .h5 model file. Save the model with "
        "model.save('model.keras') (Keras 3) or model.save('model.h5') (tf_keras) first. "
        f"Received: path={path!r}"
    )


def load_model_file(path, trust_code=None):
    """Load a `.keras` (Keras 3, safe mode) or `.h5` (tf_keras, trusted only) model.

    tfcompress's own layers (fake-quant, clustering, pruning) are registered
    first, so a pipeline stage's `model.keras` loads.

    Args:
        path: the model file.
        trust_code: allow code from the file (Lambda layers, `.h5`); `None`
            uses the enclosing `trusting(...)` block.

    Returns:
        The model.

    Raises:
        InvalidModelFileError: the file is not a loadable model; the message names it.
        UntrustedCodeError: loading it would run code and it is not trusted.
    """
    check_model_file(path, trust_code)
    path = os.fspath(path)
    trusted = _trusted(trust_code)
    if path.endswith((".h5", ".hdf5")):
        import tf_keras

        try:
            return tf_keras.models.load_model(path)
        except Exception as e:
            raise InvalidModelFileError(
                f"tf_keras could not load '{path}': {type(e).__name__}: {_first_line(e)}. "
                f"Received: path={path!r}"
            ) from None
    import keras

    register_custom_layers()
    try:
        return keras.saving.load_model(path, safe_mode=not trusted)
    except Exception as e:
        message = _first_line(e)
        if "safe_mode" in str(e) or "unsafe" in str(e).lower():
            try:
                with zipfile.ZipFile(path) as z:
                    lambdas = _lambda_layers(z.read("config.json").decode("utf-8", "replace"))
            except (OSError, KeyError, zipfile.BadZipFile):
                lambdas = []
            what = ", ".join(lambdas) or "a Lambda layer"
            raise UntrustedCodeError(
                f"'{path}' holds Python code ({what}: its bytecode) that Keras's safe mode "
                "will not run. Pass --trust-code (trust_code=True) only if you trust the file's "
                f"author. Received: path={path!r}"
            ) from None
        raise InvalidModelFileError(
            f"Keras could not load '{path}': {type(e).__name__}: {message}. If the model has "
            "custom layers, import the module that registers them. "
            f"Received: path={path!r}"
        ) from None


def _first_line(e, limit=300):
    text = str(e).strip().splitlines()
    text = text[0] if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_model(spec, trust_code=None):
    """The recipe's starting model."""
    if spec.path is not None:
        if not os.path.exists(spec.path):
            raise RecipeError(f"The model path '{spec.path}' does not exist.")
        return load_model_file(spec.path, trust_code)
    return build_from_factory(spec.factory, dict(spec.kwargs), "model", trust_code)


# ----------------------------------------------------------------------------- data


def load_data(spec, seed=0, cache_dir=None, trust_code=None):
    """The recipe's data as `PipelineData`, validated (see `validate_data`)."""
    if spec.embedded == "digits":
        from tfcompress.data import load_digits

        d = load_digits(seed=seed)
        return PipelineData(
            d.x_train,
            d.y_train,
            d.x_val,
            d.y_val,
            d.x_test,
            d.y_test,
            "scikit-learn digits (1,797 real 8x8 images)",
        )
    if spec.embedded == "sst2":
        try:
            data = _load_sst2(spec, seed, cache_dir)
        except (ValueError, OSError) as e:  # a malformed TSV names its file and line
            raise DataError(f"SST-2 data cannot be read: {_first_line(e, 500)}") from None
        return validate_data(data)
    if spec.npz is not None:
        return validate_data(_load_npz(spec.npz))
    result = build_from_factory(spec.factory, dict(spec.kwargs), "data", trust_code)
    try:
        data = PipelineData(
            result.x_train,
            np.asarray(result.y_train),
            result.x_val,
            np.asarray(result.y_val),
            result.x_test,
            np.asarray(result.y_test),
            f"from {spec.factory}",
        )
    except AttributeError as e:
        raise RecipeError(
            f"The data factory '{spec.factory}' must return an object with "
            f"x_train, y_train, x_val, y_val, x_test, y_test: {e}"
        ) from None
    return validate_data(data)


def _load_npz(path):
    if not os.path.isfile(path):
        raise RecipeError(f"The data file '{path}' does not exist.")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
            if missing:
                raise RecipeError(
                    f"The data file '{path}' lacks arrays {missing}; it has {sorted(f.keys())}."
                )
            x_val = f["x_val"] if "x_val" in f else f["x_test"]
            y_val = f["y_val"] if "y_val" in f else f["y_test"]
            return PipelineData(
                f["x_train"],
                f["y_train"],
                x_val,
                y_val,
                f["x_test"],
                f["y_test"],
                f"arrays from {path}",
            )
    except RecipeError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(
            f"The data file '{path}' is not a readable .npz archive "
            f"({type(e).__name__}: {_first_line(e)}). Save it with "
            f"numpy.savez. Received: npz={path!r}"
        ) from None


def _arrays(x):
    return dict(x) if isinstance(x, dict) else {"x": x}


def _length(name, x):
    lengths = {k: len(v) for k, v in _arrays(x).items()}
    if len(set(lengths.values())) > 1:
        raise DataError(
            f"The inputs of {name} have different lengths {lengths}; every input "
            f"needs one row per sample. Received: {lengths}"
        )
    return next(iter(lengths.values()))


def validate_data(data):
    """Refuse data that would train silently to a wrong result.

    Checks every split: non-empty, as many labels as inputs, inputs finite,
    labels whole non-negative numbers (cast to int), the same sample shape
    in every split.

    Returns:
        The same `PipelineData`, labels as int64.

    Raises:
        DataError: naming the split and what is wrong.
    """
    shapes = {}
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        try:
            arrays = {k: np.asarray(v) for k, v in _arrays(x).items()}
            y = np.asarray(y)
        except (ValueError, TypeError) as e:
            raise DataError(f"x_{split} / y_{split} are not arrays: {e}") from None
        n = _length(f"x_{split}", arrays)
        if n == 0:
            raise DataError(
                f"x_{split} is empty: training or evaluating on no samples gives "
                f"meaningless results. Received: x_{split} with 0 samples"
            )
        if y.ndim != 1 or len(y) != n:
            raise DataError(
                f"y_{split} must hold one integer label per sample of x_{split} "
                f"({n}). Received: y_{split} of shape {tuple(y.shape)}"
            )
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)):
                raise DataError(
                    f"y_{split} holds NaN or infinite labels. Received: "
                    f"{int(np.sum(~np.isfinite(y)))} such labels"
                )
            fractional = y[y != np.round(y)]
            if fractional.size:
                raise DataError(
                    f"y_{split} must hold class ids (whole numbers); "
                    f"{fractional.size} labels are fractional and would be truncated. "
                    f"Received: y_{split} values such as {fractional[:3].tolist()}"
                )
        elif y.dtype.kind not in "iub":
            raise DataError(f"y_{split} must hold integer class ids. Received: dtype {y.dtype}")
        if y.size and y.min() < 0:
            raise DataError(
                f"y_{split} holds negative labels; class ids start at 0. Received: "
                f"min label {y.min()}"
            )
        for name, a in arrays.items():
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                bad = int(np.sum(~np.isfinite(a)))
                raise DataError(
                    f"x_{split}{'' if name == 'x' else '[' + repr(name) + ']'} "
                    f"holds {bad} NaN or infinite values; the model would train on "
                    f"garbage. Clean or impute them. Received: {bad} non-finite "
                    "values"
                )
            if a.dtype.kind not in "fiub":
                raise DataError(f"x_{split} must be numeric. Received: dtype {a.dtype}")
            shapes.setdefault(name, {})[split] = tuple(a.shape[1:])
        setattr(data, f"y_{split}", y.astype(np.int64))
    for name, by_split in shapes.items():
        if len(set(by_split.values())) > 1:
            raise DataError(
                f"Input '{name}' has a different sample shape per split; every "
                f"split must match. Received: {by_split}"
            )
    return data


def check_data_fits(model, data):
    """The model can consume the data: labels within its classes, samples of its input shape.

    Raises:
        DataError: naming the model, the shape or the largest label.
    """
    outputs = getattr(model, "outputs", None)
    if outputs:
        classes = outputs[0].shape[-1]
        top = int(max(data.y_train.max(), data.y_val.max(), data.y_test.max()))
        if classes is not None and classes > 1 and top >= classes:
            raise DataError(
                f"The labels go up to {top} but model '{model.name}' has {classes} outputs "
                f"(classes 0..{classes - 1}). Fix the labels or the model's last layer. "
                f"Received: max label {top}"
            )
    inputs = getattr(model, "inputs", None)
    if inputs and len(inputs) == 1 and not isinstance(data.x_train, dict):
        want = tuple(inputs[0].shape[1:])
        got = tuple(np.asarray(data.x_train).shape[1:])
        if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
            raise DataError(
                f"Model '{model.name}' takes samples of shape {want} but x_train's samples "
                f"have shape {got}. Reshape the data or fix the model's input. "
                f"Received: x_train shape {tuple(np.asarray(data.x_train).shape)}"
            )


def fingerprint(data):
    """sha256 over every split's arrays (shape, dtype and bytes)."""
    digest = hashlib.sha256()
    for split in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        for name, a in sorted(_arrays(getattr(data, split)).items()):
            a = np.ascontiguousarray(np.asarray(a))
            digest.update(f"{split}/{name}/{a.dtype.str}/{a.shape}".encode())
            if a.dtype.kind == "O":
                digest.update(repr(a.tolist()).encode())
            else:
                digest.update(a.tobytes())
    return digest.hexdigest()


def _load_sst2(spec, seed, cache_dir):
    from tfcompress.data import encode_for_bert, load_sst2, sst2_tokenizer

    splits = load_sst2(max_train=spec.max_train or 4000, seed=seed)
    vocab = os.path.join(cache_dir, "vocabulary.txt") if cache_dir else None
    tokenizer = sst2_tokenizer(
        splits.x_train, vocabulary_size=spec.vocabulary_size, cache_path=vocab
    )
    n_val = min(len(splits.x_val), 1000)

    def encode(x):
        return encode_for_bert(tokenizer, x, sequence_length=spec.sequence_length)

    return PipelineData(
        encode(splits.x_train),
        splits.y_train,
        encode(splits.x_val[:n_val]),
        splits.y_val[:n_val],
        encode(splits.x_test),
        splits.y_test,
        f"SST-2 ({len(splits.x_train)} training sentences, dev as test)",
    )


def register_custom_layers():
    """Import the modules whose layers a saved stage model may contain.

    Their layers register themselves with Keras on import, so a `.keras` file
    holding fake-quant, pruning or clustering wrappers loads by name.
    """
    import importlib

    for name in ("tfcompress.quantize", "tfcompress.cluster", "tfcompress.prune"):
        importlib.import_module(name)
