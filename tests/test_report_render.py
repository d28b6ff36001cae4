"""The report end to end: results made by the real producer (``robustfeat bench`` -> train ->
evaluate), the CLI (-o, --readme, --figures, perf.json discovery), and the HTML page rendered
in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from robustfeat import bench
from robustfeat.cli import main
from robustfeat.errors import ConfigError
from robustfeat.report import load_external_figures
from robustfeat.report.stats import format_stat, summarize

RECIPE = """
model: test_cnn
model_args: {width: 4}
data: folder:FOLDER
batch_size: 16
epochs: 2
precision: fp32
progress: false
eval_suite: quick
eval_n: 16
bench:
  seeds: [0, 1]
  cells:
    - method: ce
"""
README = "# title\n\nintro\n\n<!-- results:start -->\nstale\n<!-- results:end -->\n\nfooter\n"
PERF = {"schema": "robustfeat.perf/1", "step_time_ratio_vs_ce": {"hnc": 1.04}}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def bench_results(tmp_path_factory) -> Path:
    """results/tiny/ce/seed{0,1} published by the real bench (trained and evaluated) on a
    user's own data: a 3-class image folder without train/ and test/."""
    root = tmp_path_factory.mktemp("bench")
    folder = root / "my_photos"
    generator = torch.Generator().manual_seed(0)
    for k, name in enumerate(("apple", "pear", "plum")):
        (folder / name).mkdir(parents=True)
        for i in range(40):
            noise = torch.randint(0, 60, (8, 8, 3), generator=generator)
            pixels = (noise + torch.tensor([40 + 80 * k, 120, 200 - 80 * k])).clamp(0, 255)
            Image.fromarray(pixels.to(torch.uint8).numpy()).save(folder / name / f"{i:02d}.png")
    recipe = root / "tiny.yaml"
    recipe.write_text(RECIPE.replace("FOLDER", str(folder)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTFEAT_CACHE", str(root / "cache"))
        bench.run_bench(str(recipe), runs_dir=root / "runs", results_dir=root / "results")
    (root / "results" / "perf.json").write_text(json.dumps(PERF))
    return root / "results" / "tiny"


def tiny_png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (24, 16), (200, 30, 30)).save(path)


def md_row(markdown: str, first_cell: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r}")


def md_header(markdown: str, first_cell: str) -> list[str]:
    return md_row(markdown, first_cell)


def test_report_from_real_bench_results(bench_results, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    out = tmp_path / "report"
    assert main(["report", str(bench_results), "-o", str(out), "--readme", str(readme)]) == 0
    assert "2 runs in 1 cell " in capsys.readouterr().out
    runs = [
        json.loads((bench_results / "ce" / f"seed{s}" / "results.json").read_text()) for s in (0, 1)
    ]
    clean = format_stat(summarize(r["clean"]["accuracy"] for r in runs))
    fgsm = [next(a for a in r["attacks"] if a["label"] == "fgsm")["accuracy"] for r in runs]

    markdown = (out / "report.md").read_text()
    header = md_header(markdown, "Cell")
    row = dict(zip(header, md_row(markdown, "tiny/ce"), strict=True))
    assert row["Seeds"] == "2 (0,1)" and row["Clean"] == clean
    assert row["fgsm"] == format_stat(summarize(fgsm))
    per_epoch = [r["run"]["train_seconds"] / 2 for r in runs]  # 2 epochs in metrics.jsonl
    assert row["Train s/epoch"] == format_stat(summarize(per_epoch), 1, 1.0) + " s"
    # runs on a user's folder fill no paper table (the papers measure CIFAR); those are named
    assert "Baseline [31]" not in markdown and "Paper row" not in markdown
    assert "No run fills (left out): TENET (Wu et al.), Table 5;" in markdown
    for figure in ("eps", "training", "cost"):  # from real checks / metrics.jsonl
        assert (out / "figures" / f"{figure}.png").read_bytes().startswith(b"\x89PNG")
        assert f"figures/{figure}.png" in markdown
    assert "Training overhead vs CE" in markdown  # perf.json found above the results dir

    text = readme.read_text()
    assert text.startswith("# title\n\nintro\n\n<!-- results:start -->\n")
    assert text.endswith("<!-- results:end -->\n\nfooter\n") and "stale" not in text
    section = text.split("<!-- results:start -->")[1].split("<!-- results:end -->")[0]
    assert "| tiny/ce |" in section and "**Training overhead vs CE**" in section
    assert "figures/" not in section  # the README gets tables only


def test_cli_report_errors_are_one_clear_line(bench_results, tmp_path, capsys):
    assert main(["report", str(bench_results)]) == 2
    assert "nothing to write" in capsys.readouterr().err
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert main(["report", str(bench_results), "--readme", str(readme)]) == 2
    assert "<!-- results:start -->" in capsys.readouterr().err
    assert readme.read_text() == "# no markers\n"
    assert main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_external_figures_with_caption_index(tmp_path):
    figures = tmp_path / "figs"
    figures.mkdir()
    tiny_png(figures / "cam_grid.png")
    tiny_png(figures / "cifs_channels.png")
    (figures / "index.yaml").write_text(
        "- {file: cam_grid.png, caption: CE vs HNC vs Top-GAP, section: CAM grids}\n"
        "- {file: cifs_channels.png, title: CIFS channels, caption: activations}\n"
    )
    found = load_external_figures(figures)
    assert list(found) == ["CAM grids", "Figures from trained models"]
    cam = found["CAM grids"][0]
    assert (cam.id, cam.title, cam.caption) == ("ext-cam_grid", "cam grid", "CE vs HNC vs Top-GAP")
    assert found["Figures from trained models"][0].title == "CIFS channels"
    (figures / "index.yaml").write_text("- {file: gone.png}\n")
    with pytest.raises(ConfigError, match="does not exist"):
        load_external_figures(figures)
    (figures / "index.yaml").unlink()
    (figures / "notes.png").write_text("not a png")
    with pytest.raises(ConfigError, match="not a PNG"):
        load_external_figures(figures)


def test_report_merges_figure_directories_by_section(bench_results, tmp_path):
    dirs = [tmp_path / "cams", tmp_path / "channels"]
    for directory, names in zip(dirs, (["ce_cams", "hnc_cams"], ["cifs_class0"]), strict=True):
        directory.mkdir()
        for name in names:
            tiny_png(directory / f"{name}.png")
    (dirs[0] / "index.yaml").write_text(
        "- {file: ce_cams.png, section: CAM}\n- {file: hnc_cams.png, section: CIFS}\n"
    )
    (dirs[1] / "index.yaml").write_text("- {file: cifs_class0.png, section: CIFS}\n")
    out = tmp_path / "report"
    args = ["report", str(bench_results), "-o", str(out)]
    assert main([*args, "--figures", str(dirs[0]), "--figures", str(dirs[1])]) == 0
    markdown = (out / "report.md").read_text()
    assert markdown.count("## CIFS") == 1 and markdown.count("## CAM") == 1
    cifs = markdown.split("## CIFS")[1].split("\n## ")[0]
    assert "figures/ext-hnc_cams.png" in cifs and "figures/ext-cifs_class0.png" in cifs


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
CHECK_SCRIPT = """
<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const out = {
    errors: window.__errors,
    tables: Array.from(document.querySelectorAll("table[data-table]")).map(t => t.dataset.table),
    images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    dataUris: imgs.filter(i => i.src.startsWith("data:image/png;base64,")).length,
    external: Array.from(document.querySelectorAll("[src],link[href]"))
      .filter(e => !(e.getAttribute("src") || "").startsWith("data:")).length,
  };
  const pre = document.createElement("pre");
  pre.id = "check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(bench_results, tmp_path):
    figures = tmp_path / "figs"
    figures.mkdir()
    tiny_png(figures / "cam_grid.png")
    out = tmp_path / "report"
    assert main(["report", str(bench_results), "-o", str(out), "--figures", str(figures)]) == 0
    page = (out / "index.html").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # self-contained
    # a test-only copy with a script that reports what the browser loaded
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))
    profile = tmp_path / "profile"
    result = subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r'<pre id="check">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the page did not finish loading: {result.stdout[:500]} {result.stderr[-800:]}"
    check = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["errors"] == []
    # runs on the user's own 3-class folder: the all-cells table, no paper table
    assert check["tables"][0] == "cells" and "provenance" in check["tables"]
    assert "overhead" in check["tables"]
    assert not {"tenet", "hnc", "cifs", "topgap", "alfa"} & set(check["tables"])
    assert "No run fills (left out): TENET" in result.stdout
    assert check["images"] >= 4  # eps, training, cost + the external CAM grid
    assert check["decoded"] == check["images"] == check["dataUris"]
    assert check["external"] == 0
    # and what a user sees: a screenshot of the page, not blank
    shot = tmp_path / "page.png"
    subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}-shot",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            (out / "index.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        assert len(image.convert("L").getcolors(256) or []) > 20  # text and tables, not blank
