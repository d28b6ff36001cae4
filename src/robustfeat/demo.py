"""``robustfeat demo``: every registered method, briefly, on the embedded ``shapes`` data.

Offline and CPU-friendly: one shared dataset, the ``demo`` recipe's cells (every registered
method, expensive budgets cut to the demo scale), the recipe's evaluation suite, and a
comparison table at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .bench import recipe_cells, select
from .config import load_recipe, make_config
from .data import prepare_data
from .train import train


def demo_table(rows: list[dict[str, Any]], title: str) -> Table:
    """Clean, FGSM, PGD-10 and the worst case over every attack (adaptive ones included)."""
    table = Table(title=title)
    for column in ("method", "clean", "FGSM", "PGD-10", "worst case", "flags", "seconds"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(
            row["method"],
            f"{row['clean']:.3f}",
            f"{row['fgsm']:.3f}",
            f"{row['pgd10']:.3f}",
            f"{row['worst_case']:.3f}",
            ", ".join(row["flags"]) or "-",
            f"{row['seconds']:.1f}",
        )
    return table


def run_demo(
    out: Path,
    methods: list[str] | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train and evaluate each cell of the ``demo`` recipe (one per registered method).

    ``methods`` selects cells by name; ``overrides`` is a config layer applied last (tests use
    it to shrink the budget further).
    """
    console = Console()
    recipe = load_recipe("demo")
    cells = select(recipe_cells("demo"), methods, "--methods")
    layer = {"seed": seed, "progress": False, **(overrides or {})}
    base = make_config(recipe, layer)
    data = prepare_data(base.data, seed=base.data_seed, **base.data_args)
    rows = []
    for cell in cells:
        cfg = make_config(recipe, cell.config_layer(seed), layer)
        console.rule(f"[bold]{cell.name}")
        start = time.perf_counter()
        results = train(cfg, out / cell.name, resume=True, data=data)  # a rerun continues
        rows.append(
            {
                "method": cell.name,
                "clean": results["clean"]["accuracy"],
                **{
                    a["label"]: a["accuracy"]
                    for a in results["attacks"]
                    if a.get("label") in ("fgsm", "pgd10")
                },
                "worst_case": results["worst_case"]["accuracy"],
                "flags": [flag["name"] for flag in results["flags"]],
                "seconds": time.perf_counter() - start,
            }
        )
    console.print(
        demo_table(rows, f"robustfeat demo ({base.data}, {base.model}, {base.epochs} epochs)")
    )
    console.print(f"runs written to {out}/<method>/ (config, metrics, weights, results.json)")
    return rows
