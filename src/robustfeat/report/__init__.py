"""``robustfeat report``: tables, figures and a self-contained HTML page from benchmark results.

``report(runs, out=..., readme=...)`` collects every ``results.json`` under ``runs`` (with its
``metrics.jsonl`` and ``config.yaml``), groups runs by recipe / cell, aggregates seeds
(mean ± sample std) and writes ``report.md`` + ``figures/`` + ``index.html``; with ``readme`` it
replaces the README's section between ``<!-- results:start -->`` and ``<!-- results:end -->``.
The papers' tables and the cell -> row mapping are data: ``paper_values.yaml``; the
performance goals: ``perf_goals.yaml``.
"""

from .build import build, load_external_figures, report, write_report
from .collect import CellGroup, Run, collect, group
from .render import replace_results_section
from .spec import load_spec, measure
from .stats import Stat, compare, summarize
