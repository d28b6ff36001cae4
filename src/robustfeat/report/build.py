"""Assemble the report from result trees: collect runs, build tables and figures, write
``report.md`` (+ ``figures/*.png``) and a self-contained ``index.html``, and optionally the
README's results section."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import reads
from ..errors import ConfigError
from ..io import safe_name
from .claims import DEFAULT_CLAIMS, claims_table, load_claims
from .collect import CellGroup, Collection, collect, group, read_json
from .plots import Plot, make_plots, sweep_plot
from .render import Report, Section, report_html, report_markdown, table_markdown, update_readme
from .spec import DEFAULT_PERF_GOALS, DEFAULT_TABLES, Spec, load_spec, load_yaml, read_yaml
from .tables.cam import cam_table
from .tables.cells import cells_table
from .tables.common import LEGEND, Table, count, our_setting
from .tables.flags import flags_table
from .tables.paper import assign_rows, paper_table
from .tables.perf import perf_tables, step_profile_table
from .tables.provenance import provenance_table
from .tables.sweeps import sweep_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_FIGURE_BYTES = 64 * 2**20
FIGURE_INDEX = ("index.yaml", "index.yml", "index.json")
EXTERNAL_SECTION = "Figures from trained models"


@dataclass
class Built:
    report: Report
    readme_section: str
    collection: Collection
    groups: list[CellGroup]


# ------------------------------------------------------------------ external figures
def load_external_figures(directory: str | Path) -> dict[str, list[Plot]]:
    """PNGs made elsewhere (CAM grids, CIFS channel activations), by section.

    ``directory/index.yaml`` (or .yml / .json) lists ``[{file, caption, title?, section?}]``
    (or ``{figures: [...]}``); without an index every ``*.png`` is taken, captioned by its name.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"--figures {directory} is not a directory")
    index = next((directory / n for n in FIGURE_INDEX if (directory / n).is_file()), None)
    if index is None:
        entries: list[Any] = [{"file": p.name} for p in sorted(directory.glob("*.png"))]
    else:
        raw = read_json(index) if index.suffix == ".json" else read_yaml(index)
        entries = raw.get("figures") if isinstance(raw, dict) else raw
        if not isinstance(entries, list):
            raise ConfigError(f"{index} must list figures: [{{file, caption, section}}, ...]")
    out: dict[str, list[Plot]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise ConfigError(f"{index}: figure {i} needs a `file`")
        # a file of this directory only: no path, no link out (nothing else on disk embedded)
        path = directory / safe_name(entry["file"], f"{index}: figure {i} file")
        if not path.is_file():
            raise ConfigError(f"{index}: figure file {path} does not exist")
        try:
            if path.is_symlink():
                raise ValueError(f"{path} is a symlink")
            png = reads.read_bytes(path, MAX_FIGURE_BYTES)
        except ValueError as err:
            raise ConfigError(
                f"{err}; figures are plain PNG files of at most {MAX_FIGURE_BYTES} bytes inside "
                "the --figures directory"
            ) from err
        if not png.startswith(PNG_SIGNATURE):
            raise ConfigError(f"{path} is not a PNG file")
        plot = Plot(
            id=f"ext-{path.stem}",
            title=str(entry.get("title") or path.stem.replace("_", " ")),
            caption=str(entry.get("caption", "")),
            png=png,
        )
        out.setdefault(str(entry.get("section") or EXTERNAL_SECTION), []).append(plot)
    return out


# ------------------------------------------------------------------ the report
def scale_note(groups: list[CellGroup], spec: Spec) -> str:
    settings: dict[str, str] = {}
    for table in spec.tables:  # one setting per paper: that of its first table
        settings.setdefault(table.title.split(",")[0], table.paper_setting)
    papers = "; ".join(f"{paper}: {setting}" for paper, setting in settings.items())
    return (
        f"Scale: every number of ours comes from {our_setting(groups)}. The papers train larger "
        f"networks for far longer on GPUs, some on other data ({papers}). Our values sit beside "
        "theirs to compare directions (does a method help over its baseline here?), never as a "
        "reproduction or as equal quantities."
    )


def papers_section(spec: Spec, groups: list[CellGroup]) -> Section:
    """The papers' tables that some run fills (runs on the paper's datasets, e.g. CIFAR-10 /
    CIFAR-100); a report on other data gets none, and says so."""
    filled = [t for t in spec.tables if any(assign_rows(t, groups).values())]
    left_out = [t.title for t in spec.tables if t not in filled]
    paragraphs = [
        "One table per paper in the layout of its headline table, for the papers whose rows "
        "some run fills (runs on the paper's datasets: "
        f"{', '.join(sorted({d for t in spec.tables for d in t.datasets}))}); rows with no "
        "matching cell say 'not run'. The cell → row mapping and the papers' values live in "
        "robustfeat/report/paper_values.yaml."
    ]
    if left_out:
        paragraphs.append(f"No run fills (left out): {'; '.join(left_out)}.")
    if filled:
        paragraphs.append(LEGEND)
    return Section("Beside the papers", paragraphs, tables=[paper_table(t, groups) for t in filled])


def readme_markdown(
    results: list[Table], perf: list[Table], groups: list[CellGroup], command: str
) -> str:
    runs = sum(len(g.runs) for g in groups)
    parts = [
        f"Generated by `{command}` from {count(runs, 'run')} in {count(len(groups), 'cell')} "
        f"({our_setting(groups)}); do not edit by hand.",
        *(table_markdown(t) for t in results),
    ]
    parts += [table_markdown(t) for t in perf]
    return "\n\n".join(parts)


def build(
    runs: Sequence[str | Path],
    *,
    figures: Sequence[str | Path] = (),
    perf: str | Path | None = None,
    tables: str | Path | None = None,
    claims: str | Path | None = None,
    perf_goals: str | Path | None = None,
    command: str = "robustfeat report",
    plots: bool = True,
) -> Built:
    collection = collect(runs, perf)
    groups, diverged = group(collection.runs), group(collection.diverged)
    spec = load_spec(tables or DEFAULT_TABLES)
    goals = load_yaml(perf_goals or DEFAULT_PERF_GOALS)
    claims_rerun = claims_table(load_claims(claims or DEFAULT_CLAIMS), groups)
    tables = [claims_rerun, cells_table(groups, spec, diverged), cam_table(groups, spec)]
    tables += [sweep_table(sweep, spec, groups, diverged) for sweep in spec.sweeps]
    results = [t for t in tables if t is not None]
    perf_list = perf_tables(collection.perf, goals) if collection.perf else []
    step = [step_profile_table(collection.step_profile)] if collection.step_profile else []

    sections = [
        Section(
            "Scale and how to read",
            [
                f"Generated by `{command}` from {count(len(collection.runs), 'run')} in "
                f"{count(len(groups), 'cell')}.",
                scale_note(groups, spec),
                LEGEND,
            ],
        ),
        Section("Results: all cells", tables=results),
        papers_section(spec, groups),
        Section("Gradient-masking flags", tables=[flags_table(groups)]),
    ]
    if plots:
        sweeps = [p for p in (sweep_plot(s, groups) for s in spec.sweeps) if p is not None]
        sections.append(Section("Figures", figures=make_plots(groups) + sweeps))
    external: dict[str, list[Plot]] = {}
    for directory in figures:
        for title, plots_in in load_external_figures(directory).items():
            external.setdefault(title, []).extend(plots_in)
    sections += [Section(title, figures=plots_in) for title, plots_in in external.items()]
    if perf_list:
        sections.append(
            Section(
                "Performance",
                [f"From {collection.perf_path}."],
                tables=perf_list + step,
            )
        )
    provenance = Section("Provenance", tables=[provenance_table(groups, collection.perf)])
    if collection.skipped:
        provenance.paragraphs.append("⚠ Skipped: " + "; ".join(collection.skipped))
    sections.append(provenance)
    report = Report("robustfeat benchmark report", sections)
    readme = readme_markdown(results, perf_list[:1] + step, groups, command)
    return Built(report, readme, collection, groups)


def write_report(built: Built, out: str | Path) -> list[Path]:
    """report.md + figures/*.png and the self-contained index.html in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for section in built.report.sections:
        for fig in section.figures:
            path = out / "figures" / f"{fig.id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(fig.png)
            written.append(path)
    for name, text in (
        ("report.md", report_markdown(built.report)),
        ("index.html", report_html(built.report)),
    ):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written


def report(
    runs: Sequence[str | Path],
    out: str | Path | None = None,
    readme: str | Path | None = None,
    **options: Any,
) -> Built:
    """Build the report from ``runs`` and write it to ``out`` and / or the README section."""
    if out is None and readme is None:
        raise ConfigError("nothing to write: give an output directory (-o) and/or --readme")
    built = build(runs, plots=out is not None, **options)
    if out is not None:
        write_report(built, out)
    if readme is not None:
        update_readme(Path(readme), built.readme_section)
    return built
