"""Render a report (sections of tables and figures) as Markdown and as one self-contained HTML
page (CSS inline, figures as base64 PNG data URIs, no external resource), and replace the
README's generated results section between its markers.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from .. import reads
from ..errors import ConfigError
from .plots import Plot
from .tables.common import Table

README_START = "<!-- results:start -->"
MAX_README_BYTES = 16 * 2**20
README_END = "<!-- results:end -->"
NUMERIC_START = set("0123456789–-≈")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1300px; padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.7em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
h3 { font-size: 1.05em; margin-top: 1.6em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .82em; margin: .4em 0; }
th, td { border: 1px solid #d0d0d0; padding: .25em .5em; text-align: right; white-space: nowrap; }
th { background: #f3f3f6; } th[colspan] { text-align: center; }
td:nth-child(-n+2), th:nth-child(-n+2), td.t { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
ul.notes { font-size: .8em; color: #555; margin-top: .2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #444; }
p.warn { color: #8a4b00; }
"""


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Plot] = field(default_factory=list)


@dataclass
class Report:
    title: str
    sections: list[Section]


# ------------------------------------------------------------------ Markdown
def md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table, notes: bool = True) -> str:
    lines = [f"**{table.title}**", ""]
    if table.rows:
        lines.append("| " + " | ".join(md_cell(h) for h in table.header) + " |")
        lines.append(
            "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(table.header))) + "|"
        )
        lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in table.rows]
    else:
        lines.append("_(no rows)_")
    if notes and table.notes:
        lines.append("")
        lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines)


def report_markdown(report: Report, figure_dir: str = "figures") -> str:
    parts = [f"# {report.title}"]
    for section in report.sections:
        parts.append(f"## {section.title}")
        parts += section.paragraphs
        parts += [table_markdown(t) for t in section.tables]
        for fig in section.figures:
            parts.append(
                f"![{fig.title}]({figure_dir}/{fig.id}.png)\n\n*{fig.title}.* {fig.caption}"
            )
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------ HTML
def esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def td(text: str) -> str:
    """A cell; numbers (and their '–' / '≈' forms) right-aligned, words left-aligned."""
    numeric = str(text)[:1] in NUMERIC_START
    return f"<td>{esc(text)}</td>" if numeric else f'<td class="t">{esc(text)}</td>'


def table_html(table: Table) -> str:
    out = [f'<h3 id="{esc(table.id)}">{esc(table.title)}</h3>']
    if table.rows:
        head = "".join(f"<th>{esc(h)}</th>" for h in table.short_header or table.header)
        if table.groups:
            spans = "".join(f'<th colspan="{n}">{esc(label)}</th>' for label, n in table.groups)
            head = f"{spans}</tr><tr>{head}"
        body = "".join("<tr>" + "".join(td(c) for c in row) + "</tr>" for row in table.rows)
        out.append(
            f'<div class="scroll"><table data-table="{esc(table.id)}"><thead><tr>{head}</tr>'
            f"</thead><tbody>{body}</tbody></table></div>"
        )
    else:
        out.append("<p><em>(no rows)</em></p>")
    if table.notes:
        out.append(
            '<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in table.notes) + "</ul>"
        )
    return "\n".join(out)


def figure_html(fig: Plot) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (
        f'<figure id="fig-{esc(fig.id)}"><img alt="{esc(fig.title)}" '
        f'src="data:image/png;base64,{data}"><figcaption><strong>{esc(fig.title)}.</strong> '
        f"{esc(fig.caption)}</figcaption></figure>"
    )


def report_html(report: Report) -> str:
    body = [f"<h1>{esc(report.title)}</h1>"]
    toc = "".join(
        f'<li><a href="#s{i}">{esc(s.title)}</a></li>' for i, s in enumerate(report.sections)
    )
    body.append(f"<nav><ul>{toc}</ul></nav>")
    for i, section in enumerate(report.sections):
        body.append(f'<h2 id="s{i}">{esc(section.title)}</h2>')
        body += [
            f'<p class="warn">{esc(p)}</p>' if p.startswith("⚠") else f"<p>{esc(p)}</p>"
            for p in section.paragraphs
        ]
        body += [table_html(t) for t in section.tables]
        body += [figure_html(f) for f in section.figures]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(report.title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# ------------------------------------------------------------------ README
def replace_results_section(readme: str, generated: str) -> str:
    """``readme`` with the text between the results markers replaced by ``generated`` (markers
    kept, everything outside them untouched)."""
    starts, ends = readme.count(README_START), readme.count(README_END)
    if starts != 1 or ends != 1:
        raise ConfigError(
            f"the README must hold exactly one {README_START} and one {README_END} marker "
            f"(found {starts} and {ends}); add them where the results section goes"
        )
    head, rest = readme.split(README_START)
    if README_END not in rest:
        raise ConfigError(f"{README_END} comes before {README_START} in the README")
    _, tail = rest.split(README_END)
    return f"{head}{README_START}\n{generated.strip()}\n{README_END}{tail}"


def update_readme(path: Path, generated: str) -> None:
    try:
        text = reads.read_text(path, MAX_README_BYTES)
    except OSError as err:
        raise ConfigError(f"cannot read README {path}: {err.strerror or err}") from err
    except ValueError as err:  # too large, or not UTF-8
        raise ConfigError(f"cannot read README {path}: {err}") from err
    path.write_text(replace_results_section(text, generated))
