"""What ``robustfeat list KIND [-v]`` shows: every registered entry of a kind, and with ``-v`` its
options with their defaults and one line of doc.

Everything is read from the code (signatures, dataclass fields, docstrings, recipe
descriptions), never from a table kept by hand, so a new method, a plugin's registration or a
changed default shows up by itself.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import RobustfeatError

REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Option:
    name: str
    type: str  # the annotation as written ("" when there is none)
    default: Any = REQUIRED


@dataclass(frozen=True)
class Entry:
    name: str
    doc: str = ""
    options: tuple[Option, ...] = ()
    takes_more: bool = False  # the entry also passes any other keyword on (``**kwargs``)
    # where reading the options is costly (timm's import), the full entry, read only for -v
    expand: Callable[[], Entry] | None = None


def first_line(text: str | None, width: int = 100) -> str:
    """The summary of a docstring or description (its first paragraph) on one line, cut at a
    word boundary to ``width`` characters."""
    summary = " ".join(inspect.cleandoc(text or "").strip().split("\n\n")[0].split())
    if len(summary) <= width:
        return summary
    return summary[: width - 2].rsplit(" ", 1)[0] + " …"


def doc_line(obj: Any) -> str:
    """One line of doc: the object's own docstring (a class does not inherit its base's), else
    the docstring of the module that defines it."""
    own = obj.__dict__.get("__doc__") if isinstance(obj, type) else obj.__doc__
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    return first_line(own) or first_line(getattr(module, "__doc__", None))


def options_of(fn: Callable[..., Any], skip: Iterable[str] = ()) -> tuple[tuple[Option, ...], bool]:
    """The keyword options of ``fn`` (a class: its ``__init__``) less the ones the framework
    fills in (``skip``), and whether it also takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    skipped = {"self", *skip}
    options = tuple(
        Option(p.name, _annotation(p.annotation), p.default)
        for p in params
        if p.name not in skipped and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )
    return options, any(p.kind is p.VAR_KEYWORD for p in params)


def entry(name: str, obj: Callable[..., Any], skip: Iterable[str] = (), doc: str = "") -> Entry:
    options, takes_more = options_of(obj, skip)
    return Entry(name, doc or doc_line(obj), options, takes_more)


def _annotation(annotation: Any) -> str:
    if annotation is REQUIRED:
        return ""
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def format_value(value: Any) -> str:
    """A default as a user would type it; pixel-unit sizes (eps, step sizes) also as k/255."""
    if isinstance(value, float):
        short = repr(value) if len(repr(value)) <= 8 else f"{value:.6g}"
        fraction = in_255ths(value)
        return f"{short} (= {fraction})" if fraction else short
    if isinstance(value, tuple) and value and all(in_255ths(v) for v in value):
        return f"({', '.join(in_255ths(v) or '' for v in value)})"
    return repr(value) if isinstance(value, str) else str(value)


def in_255ths(value: Any) -> str | None:
    """``value`` as k/255 when it is a pixel size: k a whole number up to 32, or k < 1 with one
    decimal (ALFA's 0.5/255)."""
    if not isinstance(value, float) or not 0 < value * 255 <= 32:
        return None
    steps = value * 255
    whole = abs(steps - round(steps)) < 1e-9
    tenths = steps < 1 and abs(steps - round(steps, 1)) < 1e-9
    return f"{round(steps, 1):g}/255" if whole or tenths else None


def format_entries(entries: list[Entry], verbose: bool) -> str:
    """Names, one a line; verbose: each name with its doc line and one line per option."""
    if not verbose:
        return "\n".join(e.name for e in entries)
    blocks = []
    entries = [e.expand() if e.expand else e for e in entries]
    for e in entries:
        lines = [f"{e.name}: {e.doc}" if e.doc else e.name]
        for o in e.options:
            kind = f": {o.type}" if o.type else ""
            value = " (required)" if o.default is REQUIRED else f" = {format_value(o.default)}"
            lines.append(f"    {o.name}{kind}{value}")
        if e.takes_more:
            lines.append("    ... and any other option, passed on")
        blocks.append("\n".join(lines))
    return ("\n\n" if any(e.options for e in entries) else "\n").join(blocks)


# ------------------------------------------------------------------ kinds
def registry_entries(registry: Any, skip: Iterable[str] = ()) -> list[Entry]:
    return [entry(name, registry.get(name), skip) for name in registry.names()]


def methods() -> list[Entry]:
    from .methods import METHODS

    return registry_entries(METHODS, skip=("model",))


def models() -> list[Entry]:
    from .models import MODELS, TIMM_MODELS_HINT

    return [*registry_entries(MODELS, skip=("num_classes",)), _timm_entry(TIMM_MODELS_HINT)]


def _timm_entry(hint: str) -> Entry:
    name, _, doc = hint.partition(": ")

    def expand() -> Entry:
        from .models.timm_adapter import create_timm_model  # imports timm: only for -v

        return entry(name, create_timm_model, skip=("name", "num_classes"), doc=doc)

    return Entry(name, doc, expand=expand)


def datasets() -> list[Entry]:
    from .data import DATASETS
    from .data._registry import _COMMON_PARAMS, PATH_FORMS

    return [
        *registry_entries(DATASETS, skip=_COMMON_PARAMS),
        *(
            entry(f"{form}:PATH", PATH_FORMS.get(form), skip=_COMMON_PARAMS)
            for form in PATH_FORMS.names()
        ),
    ]


def augments() -> list[Entry]:
    from .data.augment import AUGMENTS

    return registry_entries(AUGMENTS, skip=("mean",))  # the trainer passes the dataset mean


def schemes() -> list[Entry]:
    from .adversarial.schemes import SCHEMES

    return registry_entries(SCHEMES)


def attacks() -> list[Entry]:
    from .attacks import ATTACKS

    return registry_entries(ATTACKS)


def suites() -> list[Entry]:
    """A suite is data (``attacks.suites.Suite``): its options are the fields it sets away
    from the dataclass defaults, attacks by label."""
    from .attacks.suites import SUITES, Suite

    defaults = Suite("", "")
    entries = []
    for suite in SUITES.values():
        options = []
        for f in dataclasses.fields(Suite):
            value = getattr(suite, f.name)
            if f.name in ("name", "description") or value == getattr(defaults, f.name):
                continue
            if f.name in ("attacks", "adaptive"):
                value = ", ".join(spec.label for spec in value)
            options.append(Option(f.name, "", value))
        entries.append(Entry(suite.name, first_line(suite.description), tuple(options)))
    return entries


def recipes() -> list[Entry]:
    """A recipe's doc is the first line of its ``description``; its options, the config keys it
    sets (a ``bench`` matrix is summarised by its cells)."""
    from .config import list_recipes, load_recipe, read_yaml, recipe_path

    entries = []
    for name in list_recipes():
        raw = read_yaml(recipe_path(name))
        options = [Option(key, "", value) for key, value in load_recipe(name).items()]
        bench = raw.get("bench")
        if isinstance(bench, dict):
            options.append(Option("bench cells", "", len(bench.get("cells") or [])))
        entries.append(Entry(name, first_line(raw.get("description")), tuple(options)))
    return entries


def config() -> list[Entry]:
    """``TrainConfig``'s fields with their types and defaults (``--set key=value``)."""
    from .config import TrainConfig

    defaults = TrainConfig()
    return [
        Entry(f.name, f"{f.type} = {format_value(getattr(defaults, f.name))}")
        for f in dataclasses.fields(TrainConfig)
    ]


KINDS: dict[str, Callable[[], list[Entry]]] = {
    "models": models,
    "methods": methods,
    "datasets": datasets,
    "augments": augments,
    "schemes": schemes,
    "attacks": attacks,
    "suites": suites,
    "recipes": recipes,
    "config": config,
}


def catalog(kind: str) -> list[Entry]:
    """The entries of ``kind`` (one of ``KINDS``)."""
    if kind not in KINDS:
        raise RobustfeatError(f"cannot list {kind!r}; valid: {', '.join(KINDS)}")
    return KINDS[kind]()
