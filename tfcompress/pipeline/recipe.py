"""The recipe: a YAML file that says which model, which data, and which stages, in order.

Validated with pydantic: unknown keys and wrong types are errors that name
the YAML line and the field.

Example recipe:

    name: digits
    data: {embedded: digits}
    model:
      factory: tfcompress.testing:digits_cnn
      kwargs: {filters: [16, 32], dense_units: 64}
    stages:
      - {type: train, epochs: 20}
      - {type: prune, final_sparsity: 0.8, epochs: 8}
      - {type: qat, epochs: 3}
      - {type: export, modes: [int8]}
"""

import os
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from tfcompress.errors import TFCompressError
from tfcompress.export.lowbit import available_formats
from tfcompress.export.modes import available_modes
from tfcompress.export.target import TARGETS


class RecipeError(TFCompressError, ValueError):
    """A recipe that cannot run, with the file, line and field of each problem."""


class _Strict(BaseModel):
    # NaN and infinity are never a useful number in a recipe (`learning_rate: .inf` trained
    # to NaN weights and failed minutes later with a converter error).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        # YAML's `true` would pass as the number 1 (`epochs: true` trained one epoch).
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(name, str) else None
                if isinstance(value, bool) and field is not None:
                    if field.annotation not in (bool, Optional[bool], Any):
                        raise ValueError(
                            f"{name}: expected a number or text, not the boolean {value!r}"
                        )
        return data


class FactorySpec(_Strict):
    """A Python callable named `module:function`, called with `kwargs`."""

    factory: str = Field(pattern=r"^[\w.]+:[\w.]+$")
    kwargs: dict[str, Any] = {}


class ModelSpec(_Strict):
    """Where the model comes from: a saved file, or a factory that builds it."""

    path: Optional[str] = None
    factory: Optional[str] = Field(default=None, pattern=r"^[\w.]+:[\w.]+$")
    kwargs: dict[str, Any] = {}

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.factory is None):
            raise ValueError(
                "give exactly one of 'path' (a .keras file) or 'factory' ('module:function')"
            )
        return self


class DataSpec(_Strict):
    """The data: an embedded set, an .npz file, or a factory returning splits."""

    embedded: Optional[Literal["digits", "sst2"]] = None
    npz: Optional[str] = None
    factory: Optional[str] = Field(default=None, pattern=r"^[\w.]+:[\w.]+$")
    kwargs: dict[str, Any] = {}
    max_train: Optional[int] = Field(default=None, gt=0)
    sequence_length: int = Field(default=32, gt=0)
    vocabulary_size: int = Field(default=2000, gt=10)

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("embedded", "npz", "factory") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'embedded' (digits or sst2), 'npz' (a file "
                "with x_train, y_train, x_test, y_test) or 'factory'"
            )
        return self


class _Training(_Strict):
    epochs: int = Field(default=5, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=32, gt=0)


class TrainStage(_Training):
    """Fit the current model on the labels."""

    type: Literal["train"]


class DistillStage(_Training):
    """Distil the current model (the teacher) into a smaller student."""

    type: Literal["distill"]
    student: FactorySpec
    alpha: float = Field(default=0.1, ge=0, le=1)
    temperature: float = Field(default=4.0, gt=0)


def _known_pattern(pattern: str) -> str:
    from tfcompress.prune import patterns

    parts = pattern.split("x")
    if len(parts) == 2 and all(p.isdigit() for p in parts):  # "1x4": a (1, 4) block
        patterns.parse((int(parts[0]), int(parts[1])))
    else:
        patterns.parse(pattern)  # its error says what a pattern looks like
    return pattern


class PruneStage(_Training):
    """Magnitude pruning to `final_sparsity`, then strip the wrappers."""

    type: Literal["prune"]
    final_sparsity: float = Field(ge=0, lt=1)
    initial_sparsity: float = Field(default=0.0, ge=0, lt=1)
    schedule: Literal["polynomial", "constant"] = "polynomial"
    scope: Literal["layer", "global"] = "layer"
    pattern: Annotated[str, AfterValidator(_known_pattern)] = "unstructured"


class RemoveUnitsStage(_Training):
    """Remove whole neurons / filters, then fine-tune."""

    type: Literal["remove_units"]
    fraction: float = Field(gt=0, lt=1)


class ClusterStage(_Training):
    """Weight clustering to `number_of_clusters` shared values per layer."""

    type: Literal["cluster"]
    number_of_clusters: int = Field(default=16, ge=2)
    init: str = "kmeans++"  # a registered tfcompress.cluster init: kmeans++, linear, ...

    @model_validator(mode="after")
    def _known_init(self):
        from tfcompress.cluster.init import available_inits

        if self.init not in available_inits():
            raise ValueError(
                f"init must be one of {sorted(available_inits())} (register more "
                f"with tfcompress.cluster.register_init); received {self.init!r}"
            )
        return self


class QATStage(_Training):
    """Quantization-aware fine-tuning for an int8 file."""

    type: Literal["qat"]
    weight_scheme: str = "int8"  # a tfcompress.quantize scheme: int8, int4, int4_block32, ...
    # Per-layer schemes, {layer name or glob: scheme}: mixed precision trained on the grid
    # each layer's file format uses (pair it with the export stage's `layers:`).
    layers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_scheme(self):
        from tfcompress.quantize.schemes import get_scheme

        for scheme in (self.weight_scheme, *self.layers.values()):
            get_scheme(scheme)  # the error lists the schemes
        return self


def _known_mode(mode: str) -> str:
    # Looked up when the recipe is read, so a mode registered after import is usable too.
    if mode not in available_modes():
        raise ValueError(
            f"unknown export mode {mode!r}; registered modes: {', '.join(available_modes())}"
        )
    return mode


def _known_format(fmt: str) -> str:
    if fmt not in available_formats():
        raise ValueError(
            f"unknown weight format {fmt!r}; formats: {', '.join(available_formats())}"
        )
    return fmt


class ExportStage(_Strict):
    """Write `.tflite` files and verify each against the model.

    `modes` lists export modes (every registered one); `target` (cpu, npu, mcu) also
    writes the file `to_tflite(target=...)` picks for that device, and records why.
    """

    type: Literal["export"]
    modes: Optional[list[Annotated[str, AfterValidator(_known_mode)]]] = None
    # Literal over a runtime tuple: the registry's names, which mypy cannot see.
    target: Optional[Literal[TARGETS]] = None  # type: ignore[valid-type]
    calibration_samples: int = Field(default=200, gt=0)
    int8_io: bool = False
    # Per-layer weight formats for the low-bit modes: {layer name or glob: int8, int4, ...}.
    layers: dict[str, Annotated[str, AfterValidator(_known_format)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something_to_write(self):
        if self.modes is None:
            object.__setattr__(self, "modes", [] if self.target else ["int8"])
        elif not self.modes and not self.target:
            raise ValueError(
                "give at least one of 'modes' (a list of export modes) or "
                "'target' (cpu, npu or mcu)"
            )
        return self


#: The spec class of every stage type a recipe may name, by type; see `register_stage_spec`.
_STAGE_SPECS: dict = {}
_TRAINS = ("train", "distill")


def _stage_union():
    specs = tuple(_STAGE_SPECS.values())
    member = specs[0] if len(specs) == 1 else Union[specs]
    return Annotated[member, Field(discriminator="type")]


def stage_types() -> tuple:
    """The stage types a recipe may name: the built-in ones and every registered one."""
    return tuple(_STAGE_SPECS)


def spec_name(spec_class: type) -> str:
    """The stage type a spec class validates: the value of its `type: Literal[...]` field."""
    field = getattr(spec_class, "model_fields", {}).get("type")
    names: tuple = getattr(field.annotation, "__args__", ()) if field is not None else ()
    if len(names) != 1 or not isinstance(names[0], str):
        raise TypeError(
            'A stage spec needs a field `type: Literal["<stage name>"]` naming its stage '
            f"type. Received: {getattr(spec_class, '__name__', spec_class)!r}"
        )
    return names[0]


def register_stage_spec(spec_class: type) -> type:
    """Let recipes name a stage type: `spec_class` validates its YAML entry.

    `spec_class` is a pydantic model (subclass `StageSpec`, or `TrainingStageSpec`
    for a stage that fits) whose `type` field is a `Literal` of the stage's name.
    `tfcompress.pipeline.stage(name, spec=...)` calls this for you.

    Args:
        spec_class: the stage's spec model.

    Returns:
        `spec_class`, so this works as a class decorator.

    Raises:
        TypeError: `spec_class` has no `type: Literal["name"]` field.

    Example:

    >>> from typing import Literal
    >>> class ShuffleStage(StageSpec):
    ...     type: Literal["shuffle"]
    >>> _ = register_stage_spec(ShuffleStage)
    >>> "shuffle" in stage_types()
    True
    """
    _STAGE_SPECS[spec_name(spec_class)] = spec_class
    if "Recipe" in globals():
        # The stage union is rebuilt from the registry at runtime: no static type for mypy.
        Recipe.model_fields["stages"].annotation = list[_stage_union()]  # type: ignore[misc, assignment]
        Recipe.model_rebuild(force=True)
    return spec_class


#: Base classes for the spec of a new stage type (see `register_stage_spec`).
StageSpec = _Strict
TrainingStageSpec = _Training

for _spec in (
    TrainStage,
    DistillStage,
    PruneStage,
    RemoveUnitsStage,
    ClusterStage,
    QATStage,
    ExportStage,
):
    register_stage_spec(_spec)


class Recipe(_Strict):
    """A whole compression job."""

    name: str = "recipe"
    seed: int = Field(default=0, ge=0, lt=2**32)
    model: ModelSpec
    data: DataSpec
    stages: list[_stage_union()] = Field(min_length=1)  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _stage_order(self):
        trained = self.model.path is not None
        for i, stage in enumerate(self.stages):
            if stage.type in _TRAINS:
                trained = True
            elif not trained:
                raise ValueError(
                    f"stage {i + 1} ({stage.type}) comes before any stage that trains the "
                    "model built by the factory; add a 'train' (or 'distill') stage first, or "
                    "give a trained model with 'path'"
                )
        return self


#: A recipe is a few dozen nodes; aliases that expand past this are a "billion laughs" file.
MAX_YAML_NODES = 10_000


class _RecipeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue  # `<<: *base` merges may be overridden on purpose
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found the key {key_node.value!r} twice (lines {seen[key_node.value]} and "
                    f"{line}); keep one",
                    key_node.start_mark,
                )
            seen[key_node.value] = line
        return super().construct_mapping(node, deep=deep)


def _check_expansion(tree, name):
    """Refuse YAML whose aliases expand to more than `MAX_YAML_NODES` nodes."""
    sizes = {}

    def size(node):
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a recursive alias counts once, then grows through its parents
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        sizes[id(node)] = total
        if total > MAX_YAML_NODES:
            raise RecipeError(
                f"{name}: its YAML aliases expand to more than {MAX_YAML_NODES:,} "
                "values; a recipe needs a few dozen. Remove the repeated aliases."
            )
        return total

    if tree is not None:
        size(tree)


def load_recipe(source: str | os.PathLike | dict) -> Recipe:
    """Read and validate a recipe.

    Args:
        source: a path to a YAML file, or a dict.

    Returns:
        A `Recipe`.

    Raises:
        RecipeError: listing each problem as "file, line N: field: message".
    """
    name, tree, data = "<recipe>", None, source
    if not isinstance(source, dict):
        name = os.fspath(source)
        if not os.path.isfile(name):
            raise RecipeError(f"No recipe file at '{name}'.")
        try:
            with open(name, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise RecipeError(
                f"{name} is not UTF-8 text: byte 0x{e.object[e.start]:02x} at "
                f"offset {e.start}. Save the recipe as UTF-8."
            ) from None
        try:
            tree = yaml.compose(text, Loader=_RecipeLoader)
            _check_expansion(tree, name)
            data = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise RecipeError(f"{name}{where} is not valid YAML: {problem}") from None
        if not isinstance(data, dict):
            raise RecipeError(
                f"{name}: a recipe is a mapping with 'model', 'data' and "
                f"'stages'; the file holds {type(data).__name__}."
            )
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        problems = [_describe(error, name, tree) for error in e.errors()]
        raise RecipeError(
            f"{name} has {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        ) from None


def _describe(error, name, tree):
    loc = [part for part in error["loc"]]
    line = _line_of(tree, loc)
    field = ""
    for part in loc:
        if isinstance(part, int):
            field += f"[{part}]"
        elif part not in _STAGE_SPECS:
            field += ("." if field else "") + str(part)
    field = field or "(top level)"
    where = f"{name}, line {line}" if line else name
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key (check its spelling against the documented fields)"
    elif (
        "input" in error
        and error["type"] not in ("missing",)
        and not isinstance(error["input"], (dict, list))
    ):
        message += f" (received {error['input']!r})"
    return f"{where}: {field}: {message}"


def _line_of(node, loc):
    """The 1-based line of the YAML node at `loc`, or of the nearest parent found."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                if part in _STAGE_SPECS:
                    continue  # pydantic's discriminator tag, not a YAML key
                return line
            key, node = match[0]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
