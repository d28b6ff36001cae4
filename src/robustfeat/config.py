"""Training configuration: a typed dataclass, YAML recipes, CLI overrides, validation.

Recipes are YAML files of ``TrainConfig`` fields (``recipes/<name>.yaml`` inside the package,
or any path). YAML is read with the safe loader; values are checked for type and range and a
bad one is a ConfigError that says what was wrong and what is valid.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, UnknownNameError
from .reads import read_text

RECIPE_DIR = Path(__file__).parent / "recipes"

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "multistep", "constant")
PRECISIONS = ("fp32", "bf16", "amp", "auto")  # auto: bf16 where the device has it natively
LOADERS = ("host", "device")
NOISE_TYPES = ("symmetric", "asymmetric")
NAN_POLICIES = ("stop", "skip")
SELECTION_CRITERIA = ("clean", "pgd10", "pgd10_adaptive")


@dataclass
class TrainConfig:
    # what to train
    model: str = "resnet20"
    model_args: dict[str, Any] = field(default_factory=dict)
    method: str = "ce"
    method_args: dict[str, Any] = field(default_factory=dict)
    at: str | None = None  # adversarial-training scheme composed with the method
    at_args: dict[str, Any] = field(default_factory=dict)
    # data
    data: str = "shapes"
    data_args: dict[str, Any] = field(default_factory=dict)
    data_seed: int = 0  # subset / label noise / validation split (fixed across training seeds)
    samples_per_class: int | None = None
    label_noise: float = 0.0
    label_noise_type: str = "symmetric"
    val_fraction: float = 0.0
    # a folder without train/ and test/: the stratified share of it held out as the test split
    test_fraction: float = 0.2
    crop_padding: int = 4
    padding_mode: str = "reflect"
    flip: bool = True
    # image-level augmentation after crop/flip (cutout, random_erasing, augmix: data/augment.py)
    augment: str | None = None
    augment_args: dict[str, Any] = field(default_factory=dict)
    # budget and optimisation
    epochs: int = 10
    steps: int | None = None  # a step budget overrides epochs
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float = 0.15  # fraction of all steps spent warming up (onecycle, cosine)
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions (multistep)
    gamma: float = 0.1
    # speed and reproducibility
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"
    # host: each batch is copied from host memory; device: the uint8 training set is copied to
    # the device once and batches are indexed and augmented there (same batches, data/loader.py)
    loader: str = "host"
    seed: int = 0
    deterministic: bool = False
    # bookkeeping
    checkpoint_every: int | None = None  # also checkpoint every N steps (always each epoch)
    # false: a finished run keeps only its final weights (no checkpoint, no optimizer state)
    keep_checkpoint: bool = True
    tensorboard: bool = True  # TensorBoard scalars in <run>/tensorboard (if it is installed)
    log_every: int = 50
    nan_policy: str = "stop"
    eval_suite: str | None = "clean"
    eval_n: int | None = None
    eval_n_aa: int | None = None  # AutoAttack / slow-attack subset (default: the suite's)
    # best-epoch selection on the validation split (needs val_fraction > 0): "clean" accuracy,
    # "pgd10" robust accuracy or "pgd10_adaptive" (worst case with the method's attack losses)
    # after every epoch; the best epoch is evaluated beside the last
    select_best: str | None = None
    progress: bool = True

    def validate(self) -> TrainConfig:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("loader", self.loader, LOADERS)
        _choice("label_noise_type", self.label_noise_type, NOISE_TYPES)
        _choice("nan_policy", self.nan_policy, NAN_POLICIES)
        if self.select_best is not None:
            _choice("select_best", self.select_best, SELECTION_CRITERIA)
            if self.val_fraction <= 0:
                raise ConfigError(
                    f"config select_best={self.select_best!r} scores a validation split: set "
                    "val_fraction > 0 (e.g. 0.02 holds out 2% of the training images)"
                )
        _choice("padding_mode", self.padding_mode, ("reflect", "constant", "replicate"))
        _range("epochs", self.epochs, 1)
        _range("batch_size", self.batch_size, 1)
        _range("lr", self.lr, 0.0, strict=True)
        _range("momentum", self.momentum, 0.0, 1.0)
        _range("weight_decay", self.weight_decay, 0.0)
        _range("gamma", self.gamma, 0.0, strict=True)
        _range("crop_padding", self.crop_padding, 0)
        _range("log_every", self.log_every, 1)
        _range("warmup", self.warmup, 0.0, 1.0)
        _range("label_noise", self.label_noise, 0.0, 1.0)
        _range("val_fraction", self.val_fraction, 0.0, 0.9)
        _range("test_fraction", self.test_fraction, 0.0, 0.9, strict=True)
        if self.steps is not None:
            _range("steps", self.steps, 1)
        if self.samples_per_class is not None:
            _range("samples_per_class", self.samples_per_class, 1)
        if self.checkpoint_every is not None:
            _range("checkpoint_every", self.checkpoint_every, 1)
        # the evaluation after training, checked before it (eval_n_aa 0: no AutoAttack)
        if self.eval_n is not None:
            _range("eval_n", self.eval_n, 1)
        if self.eval_n_aa is not None:
            _range("eval_n_aa", self.eval_n_aa, 0)
        if sorted(self.milestones) != self.milestones or not all(
            0 < m < 1 for m in self.milestones
        ):
            raise ConfigError(
                f"milestones must be increasing fractions in (0, 1), got {self.milestones}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own text spans lines)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + " ".join(problem.split())


MAX_YAML_BYTES = 16 * 2**20  # a config, recipe or index file
MAX_YAML_NODES = 100_000  # nodes after alias expansion ("billion laughs": ~10^9 from 500 bytes)


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing documents whose aliases expand past ``MAX_YAML_NODES``
    (counted on the composed node graph, shared nodes once per reference, before any Python
    object is built)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _expanded_size(node, {})
        return super().construct_document(node)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    if id(node) not in memo:
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        memo[id(node)] = 1 + sum(_expanded_size(child, memo) for child in children)
        if memo[id(node)] > MAX_YAML_NODES:
            raise yaml.YAMLError(
                f"its aliases expand to more than {MAX_YAML_NODES} values (refused unexpanded)"
            )
    return memo[id(node)]


def yaml_document(text: str, where: str) -> Any:
    """``text`` parsed with the bounded safe loader; any problem is a ConfigError
    ``<where>: <problem, one line>``."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: {yaml_problem(err)}") from err
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None


def read_yaml_document(path: Path) -> Any:
    """A YAML file of at most ``MAX_YAML_BYTES`` (a bounded read), bounded-loaded."""
    path = Path(path)
    try:
        text = read_text(path, MAX_YAML_BYTES)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text") from err
    except ValueError as err:  # over the limit
        raise ConfigError(str(err)) from err
    return yaml_document(text, f"{path} is not valid YAML")


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml_document(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def recipe_path(name_or_path: str) -> Path:
    """A recipe by name (``cpu``, ``demo`` ...) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            what = "is not a regular file" if path.exists() else "does not exist"
            raise ConfigError(f"recipe file {path} {what}")
        return path
    if name_or_path not in list_recipes():
        raise UnknownNameError(
            f"unknown recipe {name_or_path!r}; valid: {', '.join(list_recipes())} or a .yaml path"
        )
    return RECIPE_DIR / f"{name_or_path}.yaml"


def load_recipe(name_or_path: str, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The config keys of a recipe; a recipe may set ``extends: <other recipe>``."""
    path = recipe_path(name_or_path)
    if path.resolve() in _seen:
        chain = " -> ".join(p.stem for p in (*_seen, path.resolve()))
        raise ConfigError(f"recipe {name_or_path!r} extends itself ({chain})")
    data = read_yaml(path)
    for key in ("bench", "description"):  # benchmark-only sections are not training keys
        data.pop(key, None)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be a recipe name or path, got {parent!r}")
    return {**load_recipe(parent, (*_seen, path.resolve())), **data}


def make_config(*layers: dict[str, Any]) -> TrainConfig:
    """Merge override layers (later wins) onto the defaults and validate."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    unknown = sorted(set(merged) - set(field_names()))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid: {', '.join(field_names())}")
    return TrainConfig(**merged).validate()


def parse_assignments(items: list[str] | None, what: str) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict, values parsed as YAML scalars (``0.1``, ``true``, ``[1, 2]``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} must look like key=value, got {item!r}")
        out[key.strip()] = yaml_document(value, f"cannot parse value of {what} {item!r}")
    return out


def check_options(
    fn: Callable[..., Any], options: dict[str, Any], what: str, skip: tuple[str, ...] = ()
) -> None:
    """Options (from a recipe or ``--arg k=v``) against ``fn``'s signature: an unknown name, or
    a value that does not fit the parameter's annotation, is a ConfigError naming the option and
    what is valid. Range checks stay with the function (it knows its limits)."""
    params = {
        name: p
        for name, p in inspect.signature(fn).parameters.items()
        if name not in ("self", *skip)
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    takes_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()
    )
    unknown = sorted(set(options) - set(params))
    if unknown and not takes_any:
        raise ConfigError(
            f"bad options for {what}: unknown option(s) {unknown}; valid: {list(params)}"
        )
    check_option_types(fn, options, what)


def check_option_types(fn: Callable[..., Any], options: dict[str, Any], what: str) -> None:
    """Values that do not fit the annotation of ``fn``'s parameter of the same name are a
    ConfigError; parameters without (resolvable) annotations are not checked."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # annotations that do not resolve (e.g. TYPE_CHECKING imports): unchecked
        hints = {}
    for name, value in options.items():
        if name in hints and not value_fits(value, hints[name]):
            raise ConfigError(
                f"bad options for {what}: {name!r} must be {type_name(hints[name])}, "
                f"got {value!r} ({type(value).__name__})"
            )


# ------------------------------------------------------------------ validation helpers
_TYPES = {name: hint for name, hint in typing.get_type_hints(TrainConfig).items()}


def value_fits(value: Any, hint: Any) -> bool:
    """Whether a parsed YAML value fits a type hint; hints it does not know accept anything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(value_fits(value, option) for option in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    base = origin or hint
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base in (str, bool):
        return isinstance(value, base)
    if base in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if base in (list, tuple, collections.abc.Sequence):
        kinds = (list, tuple, str) if base is collections.abc.Sequence else (list, tuple)
        if not isinstance(value, kinds):
            return False
        if base is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(value_fits, value, args))
        return not args or all(value_fits(item, args[0]) for item in value)
    return True


def type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(option) for option in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", None) if origin is None else str(hint).replace("typing.", "")


def _check_type(name: str, value: Any, _declared: Any) -> None:
    hint = _TYPES[name]
    if not value_fits(value, hint):
        raise ConfigError(
            f"config {name!r} must be {type_name(hint)}, got {value!r} ({type(value).__name__})"
        )


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"config {name!r} is {value!r}; valid: {', '.join(valid)}")


def _range(
    name: str, value: float, low: float, high: float | None = None, strict: bool = False
) -> None:
    bad = value <= low if strict else value < low
    if bad or (high is not None and value > high) or not math.isfinite(value):
        bound = f"> {low}" if strict else f">= {low}"
        bound += f" and <= {high}" if high is not None else ""
        raise ConfigError(f"config {name!r} must be {bound}, got {value}")
