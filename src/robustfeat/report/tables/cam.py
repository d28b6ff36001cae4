"""The CAM table: localisation, sparsity, negative peakiness and ERF distance of the cells
evaluated with object masks (the ``shapes`` suite), each beside the CE cell trained on the same
data (``cam_table``)."""

from __future__ import annotations

from ..collect import CellGroup
from ..spec import Metric, Spec
from .common import LEGEND, Table, cell_stat, our_setting, ours_cell, seeds_text
from .references import data_variant, same_data_reference

CAM_COLUMNS = (
    ("Clean", Metric("clean")),
    ("IoU (best thr.)", Metric("cam", field="iou_best")),
    ("IoU @ 0.5", Metric("cam", field="iou_fixed")),
    ("L1 sparsity", Metric("cam", field="sparsity_l1")),
    ("Neg. peakiness", Metric("cam", field="neg_peakiness")),
    ("ERF distance", Metric("cam", field="erf_distance")),
    ("Biased-distribution acc.", Metric("shift")),
)


def cam_table(groups: list[CellGroup], spec: Spec) -> Table | None:
    """CAM localisation and shape metrics of every cell evaluated with masks (the ``shapes``
    suite), each compared with the CE cell trained on the same data; None without such cells."""
    with_cam = [g for g in groups if any(isinstance(r.results.get("cam"), dict) for r in g.runs)]
    if not with_cam:
        return None
    columns = [(label, m) for label, m in CAM_COLUMNS if any(cell_stat(g, m) for g in with_cam)]
    rows = []
    for group in with_cam:
        ref = same_data_reference(with_cam, group, spec.reference_cell)
        line = [group.key, group.method or "?", data_variant(group), seeds_text(group)]
        line += [ours_cell(group, ref, metric) for _, metric in columns]
        rows.append(line)
    notes = [
        f"Our runs: {our_setting(with_cam)}.",
        "CAM: the class map of the ground-truth class (the classifier as a 1x1 convolution; "
        "Top-GAP: its own class maps), upsampled and min-max normalised, on the first 1000 "
        "test images. IoU against the objects' masks at the best threshold of 0.05-0.95 and at "
        "0.5 (higher is better); L1 sparsity = mean of that map (Top-GAP Sec. 4.2, lower = "
        "sparser); negative peakiness = max - mean of the 4 highest-scoring negative classes' "
        "raw maps (HNC's flat negatives: lower; raw units, so compare within a method family); "
        "ERF distance = centre minus corner mean |gradient| of the class map w.r.t. the input, "
        "z-normalised (Top-GAP Def. 4.1, higher = the centre matters more).",
        "Top-GAP's paper (COCO / Oxford / CUB, other networks): ERF distance 0.01-0.27 standard "
        "vs 0.24-0.53 Top-GAP (Table 2), L1 0.11-0.39 vs 0.03-0.19 (Table A3), IoU 0.10-0.37 vs "
        "0.35-0.44 (Table A4) -- direction only, not comparable numbers.",
        "Clean = accuracy on the test split; cells trained with spurious backgrounds "
        "(spurious_p) are tested on random backgrounds, so Clean is their shifted accuracy and "
        "'Biased-distribution acc.' their accuracy on fresh images of the biased training "
        "distribution.",
        "Markers compare each cell with the CE cell of the same recipe and data options.",
        LEGEND,
    ]
    header = ["Cell", "Method", "Data options", "Seeds", *[label for label, _ in columns]]
    return Table("cam", "CAM quality (shapes)", header, rows, notes)
