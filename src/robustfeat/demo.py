"""``robustfeat demo``: every registered method, briefly, on the embedded ``shapes`` data.

Offline and CPU-friendly: one shared dataset, the ``demo`` recipe per method, the recipe's
evaluation suite, and a comparison table at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .config import load_recipe, make_config
from .data import prepare_data
from .methods import METHODS, list_methods
from .train import train


def demo_table(rows: list[dict[str, Any]]) -> Table:
    attack_names = sorted({a["label"] for row in rows for a in row["attacks"]})
    table = Table(title="robustfeat demo (shapes, narrow ResNet-20)")
    table.add_column("method")
    table.add_column("clean", justify="right")
    for name in attack_names:
        table.add_column(name, justify="right")
    table.add_column("train s", justify="right")
    for row in rows:
        by_label = {a["label"]: a["accuracy"] for a in row["attacks"]}
        table.add_row(
            row["method"],
            f"{row['clean']:.3f}",
            *(f"{by_label[n]:.3f}" if n in by_label else "-" for n in attack_names),
            f"{row['seconds']:.1f}",
        )
    return table


def run_demo(out: Path, methods: list[str] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    console = Console()
    recipe = load_recipe("demo")
    base = make_config(recipe, {"seed": seed})
    data = prepare_data(base.data, seed=base.data_seed, **base.data_args)
    names = methods or list_methods()
    for name in names:  # fail fast on a bad name before any training
        METHODS.get(name)
    rows = []
    for name in names:
        cfg = make_config(recipe, {"method": name, "seed": seed, "progress": False})
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        results = train(cfg, out / name, data=data)
        rows.append(
            {
                "method": name,
                "clean": results["clean"]["accuracy"],
                "attacks": [
                    {"label": a.get("label", a["name"]), "accuracy": a["accuracy"]}
                    for a in results["attacks"]
                ],
                "seconds": time.perf_counter() - start,
            }
        )
    console.print(demo_table(rows))
    console.print(f"runs written to {out}/<method>/ (config, metrics, weights, results.json)")
    return rows
