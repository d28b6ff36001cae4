"""The ``robustfeat`` command: train, eval, bench, report, list, demo.

Bad input (unknown names, bad values, unreadable files) is one clear message and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, RobustfeatError

EXIT_USAGE = 2
MAX_ERROR_CHARS = 2000


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none to show (None, a flag
    that is off) or the help text already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        nothing = action.default is None or action.default is False or action.default == []
        if nothing or action.default == argparse.SUPPRESS or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # argparse's own errors: same shape as ours
        self.print_usage(sys.stderr)
        print(f"robustfeat: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


# ------------------------------------------------------------------ train
def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        metavar="RECIPE",
        help="recipe name (see `robustfeat list recipes`) or YAML path",
    )
    p.add_argument("--method", help="training method (see `robustfeat list methods`)")
    p.add_argument("--model", help="backbone (see `robustfeat list models`; or timm/<name>)")
    p.add_argument("--data", help="dataset: a registered name, folder:PATH or zip:PATH")
    p.add_argument("--at", help="adversarial-training scheme composed with the method, or 'none'")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="step budget (overrides --epochs)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--precision",
        help="fp32, bf16 (CPU/GPU autocast), amp (CUDA fp16) or auto (bf16 where the device "
        "has it natively, else fp32; amp on a GPU without bf16)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the backbone",
    )
    p.add_argument("--eval-suite", dest="eval_suite", help="evaluation suite run after training")
    p.add_argument("--samples-per-class", type=int, dest="samples_per_class")
    p.add_argument("--label-noise", type=float, dest="label_noise")
    p.add_argument("-a", "--arg", action="append", metavar="K=V", help="method option (repeatable)")
    p.add_argument("--at-arg", action="append", metavar="K=V", help="adversarial-training option")
    p.add_argument("--model-arg", action="append", metavar="K=V", help="backbone option")
    p.add_argument("--data-arg", action="append", metavar="K=V", help="dataset option")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=V",
        help="any config key (see `robustfeat list config`)",
    )
    p.add_argument(
        "-o", "--out", help="run directory (default runs/<method>-<model>-<data>-seed<k>)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the run directory's last checkpoint"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    show_config_defaults(p)


def show_config_defaults(p: argparse.ArgumentParser) -> None:
    """Train flags default to None (so that a recipe's value wins); their help shows the
    ``TrainConfig`` default they fall back to."""
    from .config import TrainConfig

    defaults = TrainConfig().__dict__
    for action in p._actions:
        if action.default is None and defaults.get(action.dest) is not None:
            default = f"(default: {defaults[action.dest]}, or the recipe's)"
            action.help = f"{action.help} {default}" if action.help else default


def config_from_args(args: argparse.Namespace, saved: dict[str, Any] | None = None) -> Any:
    """The config of the command line; ``saved``: a resumed run's config, under the flags."""
    from .config import load_recipe, make_config, parse_assignments

    layers: list[dict[str, Any]] = [saved] if saved else []
    if args.config:
        layers.append(load_recipe(args.config))
    flags = {
        k: getattr(args, k)
        for k in (
            "method",
            "model",
            "data",
            "epochs",
            "steps",
            "batch_size",
            "lr",
            "seed",
            "device",
            "precision",
            "compile",
            "eval_suite",
            "samples_per_class",
            "label_noise",
        )
    }
    layer = {k: v for k, v in flags.items() if v is not None}
    if args.at is not None:
        layer["at"] = None if args.at == "none" else args.at
    if args.no_progress:
        layer["progress"] = False
    for key, flag, items in (
        ("method_args", "--arg", args.arg),
        ("at_args", "--at-arg", args.at_arg),
        ("model_args", "--model-arg", args.model_arg),
        ("data_args", "--data-arg", args.data_arg),
    ):
        if items:
            base = next((lay[key] for lay in reversed(layers) if key in lay), {}) or {}
            layer[key] = {**base, **parse_assignments(items, flag)}
    layers.append(layer)
    layers.append(parse_assignments(args.set, "--set"))
    return make_config(*layers)


def default_out(cfg: Any) -> Path:
    data = cfg.data.replace(":", "-").replace("/", "_")[-40:]
    at = f"+{cfg.at}" if cfg.at else ""
    return Path("runs") / f"{cfg.method}{at}-{cfg.model.replace('/', '_')}-{data}-seed{cfg.seed}"


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    saved = None
    if args.resume and args.out and (Path(args.out) / "config.yaml").is_file():
        from .runs import read_run_config

        # --resume RUN takes the run's settings; flags given again must repeat them
        saved = read_run_config(args.out).to_dict()
    cfg = config_from_args(args, saved)
    out = Path(args.out) if args.out else default_out(cfg)
    if args.resume and not out.is_dir():
        raise RobustfeatError(f"--resume: {out} does not exist; drop --resume to start a new run")
    results = train(cfg, out, resume=args.resume)
    if results:
        print(f"clean accuracy {results['clean']['accuracy']:.4f}  run: {out}")
    return 0


# ------------------------------------------------------------------ eval
def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run directory (config.yaml + weights.safetensors)"
    )
    p.add_argument(
        "--suite", default="standard", help="evaluation suite (see `robustfeat list suites`)"
    )
    p.add_argument("--n", type=int, help="size of the attacked subset (default: the suite's)")
    p.add_argument(
        "--n-aa",
        type=int,
        dest="n_aa",
        help="AutoAttack / slow-attack subset (default: the suite's)",
    )
    p.add_argument("--out", help="results file (default RUN_DIR/results.json)")
    p.add_argument("--data", help="test data spec (default: the run's config)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=250, dest="batch_size")
    p.add_argument(
        "--seed", type=int, default=0, help="subset permutation and attack random starts"
    )
    p.add_argument(
        "--corruptions-dir",
        dest="corruptions_dir",
        help="released CIFAR-10-C / CIFAR-100-C .npy files (default: generate them)",
    )
    p.add_argument(
        "--n-corruptions",
        type=int,
        default=1000,
        dest="n_corruptions",
        help="test images corrupted when generating",
    )
    p.add_argument(
        "--shift",
        action="append",
        metavar="NAME=SPEC",
        help="extra test set for distribution shift (a dataset spec; repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_eval(args: argparse.Namespace) -> int:
    from .rundir import RunDir

    out = Path(args.out) if args.out else Path(args.run_dir) / "results.json"
    run = RunDir(Path(args.run_dir))
    if out.absolute().parent == run.root.absolute():
        # the run's own results.json: not while its training (or another eval) writes there,
        # or a finished training's results could be replaced by those of an older checkpoint
        run.lock(create=False, instead="give --out a file outside the run")
    try:
        return evaluate_run(args, out)
    finally:
        run.release()


def evaluate_run(args: argparse.Namespace, out: Path) -> int:
    """``robustfeat eval``'s work: evaluate ``args.run_dir``'s weights into ``out``."""
    from . import io
    from .data import load_dataset
    from .evaluate import evaluate, keep_training_record, print_summary
    from .runs import check_data_fits, default_shift_sets, load_run, read_run_config, run_info
    from .runtime import resolve_device

    cfg = read_run_config(args.run_dir)
    spec = args.data or cfg.data
    test = run_test_split(cfg, spec)
    shift = {}
    for item in args.shift or []:
        name, sep, shift_spec = item.partition("=")
        if not sep or not name or not shift_spec:
            raise RobustfeatError(f"--shift must look like NAME=SPEC, got {item!r}")
        shift[name] = load_dataset(shift_spec, "test")
    if spec == cfg.data:
        shift.update(default_shift_sets(cfg, len(test)))
    check_data_fits(args.run_dir, test)
    method = load_run(
        args.run_dir, num_classes=test.num_classes, device=resolve_device(args.device)
    )
    results = evaluate(
        method,
        test,
        args.suite,
        n=args.n,
        n_aa=args.n_aa,
        run=run_info(cfg, args.run_dir),
        batch_size=args.batch_size,
        seed=args.seed,
        corruptions_dir=args.corruptions_dir,
        n_corruptions=args.n_corruptions,
        shift=shift or None,
        progress=not args.no_progress,
    )
    if out.is_file():  # re-evaluating a run keeps what its training recorded
        results = keep_training_record(io.read_json(out), results)
    io.write_json(out, results)
    print_summary(results)
    print(f"results: {out}")
    return 0


# ------------------------------------------------------------------ channels
def run_test_split(cfg: Any, spec: str) -> Any:
    """The test split of ``spec`` (a run's data, or another dataset given with --data)."""
    from .data import evaluation_split, load_dataset

    if spec != cfg.data:  # the run's dataset options belong to its dataset only
        return load_dataset(spec, "test")
    # a run's own data: a folder without train/ and test/ gives the part training held out
    return evaluation_split(
        spec, test_fraction=cfg.test_fraction, seed=cfg.data_seed, **cfg.data_args
    )


def load_runs_for_figures(args: argparse.Namespace) -> list[tuple[str, Any, Any]]:
    """(label, method, test split) of every RUN_DIR, all loaded (and so checked) before any
    output is written."""
    from .runs import check_data_fits, load_run, read_run_config
    from .runtime import resolve_device

    device = resolve_device(args.device)
    runs = []
    for run_dir in args.run_dirs:
        cfg = read_run_config(run_dir)
        test = run_test_split(cfg, args.data or cfg.data)
        check_data_fits(run_dir, test)
        method = load_run(run_dir, num_classes=test.num_classes, device=device)
        runs.append((run_label(run_dir), method, test))
    labels = [label for label, _, _ in runs]
    if len(set(labels)) < len(labels):
        raise RobustfeatError(
            f"the run directories give duplicate figure names {labels}: name them apart "
            "(bench layout <cell>/seed<k>, or distinct directory names)"
        )
    return runs


def figure_provenance(args: argparse.Namespace) -> dict[str, Any]:
    """What made a figure's numbers: the command line, the run directories, git SHA, versions
    and machine."""
    from .provenance import provenance

    return {
        "command": " ".join(["robustfeat", *sys.argv[1:]]),
        "run_dirs": [str(Path(r).resolve()) for r in args.run_dirs],
        "provenance": provenance(),
    }


def write_figure_index(out: Path, figures: list[dict[str, str]]) -> None:
    """``index.yaml`` of the figures in ``out``, for ``robustfeat report --figures``."""
    import yaml

    from . import io

    index_path = out / "index.yaml"
    io.atomic_write_bytes(index_path, yaml.safe_dump({"figures": figures}).encode())
    print(f"figure index for `robustfeat report --figures {out}`: {index_path}")


def cmd_channels(args: argparse.Namespace) -> int:
    from . import io
    from .interpret.channels import channel_activation_analysis, plot_channel_activations

    out = Path(args.out)
    runs = [
        (
            label,
            method,
            test,
            [_class_index(c, test.class_names, test.num_classes) for c in args.classes or ["0"]],
        )
        for label, method, test in load_runs_for_figures(args)
    ]
    figures, made_by = [], figure_provenance(args)
    for label, method, test, classes in runs:
        for index in classes:
            result = channel_activation_analysis(
                method,
                test,
                index,
                steps=args.steps,
                n=args.n,
                attack_loss=args.attack_loss,
                progress=True,
            )
            stem = f"{label}-class{index}"
            io.write_json(out / f"{stem}.json", {**result, **made_by})
            plot_channel_activations(result, out / f"{stem}.png")
            nat, adv = result["natural"], result["adversarial"]
            attack = f" on {args.attack_loss}" if args.attack_loss else ""
            caption = (
                f"{label}, class {result['class_name']} ({result['n']} test images): natural "
                f"accuracy {nat['accuracy']:.3f}, PGD-{args.steps}{attack} {adv['accuracy']:.3f}."
            )
            figures.append({"file": f"{stem}.png", "caption": caption, "section": "CIFS"})
            print(f"{stem}: {caption} -> {out / stem}.json")
    write_figure_index(out, figures)
    return 0


def cmd_cams(args: argparse.Namespace) -> int:
    import torch

    from . import io
    from .errors import check
    from .interpret.cam import small_class_map_warning
    from .interpret.metrics import cam_peakiness
    from .interpret.plots import save_cam_figure

    out = Path(args.out)
    check(args.n >= 1, f"--n must be >= 1, got {args.n}")
    check(args.n_metric >= 1, f"--n-metric must be >= 1, got {args.n_metric}")
    runs = load_runs_for_figures(args)
    for label, _, test in runs:
        check(
            1 <= args.k < test.num_classes,
            f"--k must be in [1, {test.num_classes - 1}] for {label} "
            f"({test.num_classes} classes), got {args.k}",
        )
    figures, numbers = [], {}
    for label, method, test in runs:
        for line in small_class_map_warning(method.eval_model(), test.image_shape, label):
            print(f"warning: {line}", file=sys.stderr)
        # the same images for every run: a fixed seeded choice from the test split
        count = min(args.n, len(test))
        index = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))
        images = test.subset(index[:count])
        device = next(method.parameters()).device
        x = images.float_images(slice(0, count)).to(device)
        y = images.labels.to(device)
        path = out / f"{label}-cams.png"
        title = f"{label}: positive CAM (+) and the top-{args.k} negative CAMs"
        model = method.eval_model()
        save_cam_figure(model, x, y, test.class_names, path, args.k, title)
        peaks = numbers[label] = cam_peakiness(model, test, args.n_metric, args.k)
        caption = (
            f"{label}: {count} test images (seed {args.seed}), the true class's map and the "
            f"{args.k} most probable wrong classes' maps, one colour scale per row (HNC Fig. 1). "
            f"Over the first {peaks['n']} test images, negative / positive map peakiness "
            f"(max - mean): {peaks['ratio']:.3f}."
        )
        figures.append({"file": path.name, "caption": caption, "section": "CAM"})
        print(f"{label}: {path}; negative / positive CAM peakiness {peaks['ratio']:.3f}")
    io.write_json(out / "peakiness.json", {"runs": numbers, **figure_provenance(args)})
    write_figure_index(out, figures)
    return 0


def _class_index(name: str, class_names: Sequence[str] | None, num_classes: int) -> int:
    if name.isdigit() and int(name) < num_classes:
        return int(name)
    if class_names and name in class_names:
        return list(class_names).index(name)
    valid = ", ".join(class_names) if class_names else f"0..{num_classes - 1}"
    raise RobustfeatError(f"--class {name!r} is not a class of the data; valid: {valid}")


def run_label(run_dir: str | Path) -> str:
    """A run's name in figure files: ``<cell>-seed<k>`` for the bench layout, else the
    directory's name."""
    path = Path(run_dir).resolve()
    if path.name.startswith("seed") and path.name[4:].isdigit():
        return f"{path.parent.name}-{path.name}"
    return path.name


# ------------------------------------------------------------------ list
def cmd_list(args: argparse.Namespace) -> int:
    from .catalog import catalog, format_entries

    print(format_entries(catalog(args.what), verbose=args.verbose))
    return 0


# ------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=Path(args.out), methods=args.methods, seed=args.seed)
    return 0


# ------------------------------------------------------------------ bench
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    only = [pat for item in args.only or [] for pat in item.split(",") if pat]
    options = {"only": only or None, "seeds": args.seeds, "dry_run": args.dry_run}
    options.update(runs_dir=Path(args.runs_dir), results_dir=Path(args.results_dir))
    ray_names = ("address", "cpus_per_run", "gpus_per_run")
    ray_options = {k: getattr(args, k) for k in ray_names if getattr(args, k) is not None}
    if args.executor == "local":
        if ray_options:
            raise ConfigError(f"--{next(iter(ray_options)).replace('_', '-')} needs --executor ray")
        run_bench(args.recipe, **options)
        return 0
    from .bench_ray import run_bench_ray

    summary = run_bench_ray(args.recipe, **options, **ray_options)
    return 1 if any(row["status"] == "failed" for row in summary) else 0


# ------------------------------------------------------------------ report
def cmd_report(args: argparse.Namespace) -> int:
    from .report import report

    command = "robustfeat report " + " ".join(args.runs)
    if args.readme:
        command += f" --readme {args.readme}"
    built = report(
        args.runs,
        out=args.out,
        readme=args.readme,
        figures=args.figures,
        perf=args.perf,
        tables=args.tables,
        claims=args.claims,
        command=command,
    )
    from .report.tables.common import count

    runs = sum(len(g.runs) for g in built.groups)
    print(f"report: {count(runs, 'run')} in {count(len(built.groups), 'cell')}", end="")
    print(f" -> {Path(args.out) / 'index.html'}" if args.out else "", end="")
    print(f"; README section updated in {args.readme}" if args.readme else "")
    return 0


def add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUNS",
        help="result directories (searched for results.json) or results.json / perf.json files",
    )
    p.add_argument("-o", "--out", help="output directory: report.md, figures/, index.html")
    p.add_argument(
        "--readme",
        help="README whose text between <!-- results:start --> and <!-- results:end --> "
        "is replaced by the results and overhead tables",
    )
    p.add_argument(
        "--figures",
        action="append",
        default=[],
        help="directory of PNGs made elsewhere (`robustfeat cams` / `channels`) with an "
        "optional index.yaml [{file, caption, title, section}] (repeatable)",
    )
    p.add_argument(
        "--perf",
        help="perf benchmark JSON (default: perf.json beside or above the RUNS directories)",
    )
    p.add_argument(
        "--tables",
        help="paper tables + cell -> row mapping YAML (default: the packaged paper_values.yaml)",
    )
    p.add_argument(
        "--claims",
        help="the papers' claims and where each is measured (default: the packaged claims.yaml)",
    )


def add_figure_run_args(p: argparse.ArgumentParser, out_help: str) -> None:
    """The arguments every figure command (channels, cams) shares."""
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="trained run directories")
    p.add_argument("--data", help="test data spec (default: each run's config)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("-o", "--out", required=True, help=out_help)


# ------------------------------------------------------------------ entry point
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = ArgumentParser(prog="robustfeat", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"robustfeat {__version__}")
    add_plugin_arg(parser, "plugins")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    p = sub.add_parser("train", help="train a method on a backbone and dataset")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run with an evaluation suite")
    add_eval_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "bench", help="run a recipe's benchmark matrix (methods x AT schemes x seeds)"
    )
    p.add_argument(
        "--recipe", required=True, help="recipe with a `bench:` section, e.g. cpu or demo"
    )
    p.add_argument(
        "--only", action="append", metavar="CELLS", help="cell names or globs, comma-separated"
    )
    p.add_argument("--seeds", type=int, nargs="+", help="override every cell's seeds")
    p.add_argument("--dry-run", action="store_true", help="show what would run")
    p.add_argument(
        "--runs-dir", default="runs/bench", help="where run directories (with weights) go"
    )
    p.add_argument("--results-dir", default="benchmarks/results", help="where committed results go")
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: one run after another here (default); ray: every run a Ray task",
    )
    p.add_argument("--address", help="Ray cluster to join (auto or HOST:PORT; default: start one)")
    p.add_argument("--cpus-per-run", type=int, dest="cpus_per_run", help="Ray: CPUs (threads)")
    p.add_argument("--gpus-per-run", type=float, dest="gpus_per_run", help="Ray: GPUs per run")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "report", help="tables, figures and an HTML page from benchmark results (+ README)"
    )
    add_report_args(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "channels",
        help="channel-wise activations of natural vs PGD data per class (CIFS Figs. 1/3)",
    )
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="CLASS",
        help="class index or name (repeatable; default: 0)",
    )
    p.add_argument("--n", type=int, help="at most this many test images per class (default: all)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (eps 8/255)")
    p.add_argument(
        "--attack-loss",
        metavar="NAME",
        help="craft the adversarial data on this method attack loss (e.g. ce_beta2 for CIFS/CAS; "
        "default: CE on the final logits)",
    )
    add_figure_run_args(p, "directory for the JSON, PNGs and index")
    p.set_defaults(func=cmd_channels)

    p = sub.add_parser(
        "cams", help="positive + top negative CAMs of trained runs on the same images (HNC Fig. 1)"
    )
    p.add_argument("--n", type=int, default=6, help="test images")
    p.add_argument("--k", type=int, default=4, help="negative classes per image")
    p.add_argument("--seed", type=int, default=0, help="which test images")
    p.add_argument(
        "--n-metric",
        type=int,
        default=1000,
        dest="n_metric",
        help="test images for the peakiness numbers",
    )
    add_figure_run_args(p, "directory for the PNGs, numbers, index")
    p.set_defaults(func=cmd_cams)

    p = sub.add_parser("list", help="list registered names (-v: with options and defaults)")
    p.add_argument(
        "what",
        help="models | methods | datasets | augments | schemes | attacks | suites | recipes | "
        "config",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="each entry's options with their defaults, and one line of doc",
    )
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "demo", help="train every method briefly on the embedded shapes data and compare"
    )
    p.add_argument("-o", "--out", default="runs/demo")
    p.add_argument(
        "--methods",
        nargs="*",
        help="subset of the demo cells by name, shell globs allowed (default: all)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    for p in sub.choices.values():  # --plugin also after the command name
        add_plugin_arg(p, "command_plugins")
    return parser


def add_plugin_arg(p: argparse.ArgumentParser, dest: str) -> None:
    p.add_argument(
        "--plugin",
        action="append",
        dest=dest,
        metavar="MODULE",
        help="import this module (or .py file) first: its registered methods, models, attacks, "
        "... become usable (repeatable; installed `robustfeat.plugins` entry points load always)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .plugins import load_plugins

        load_plugins([*(args.plugins or []), *(args.command_plugins or [])])
        return args.func(args)
    except RobustfeatError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        message = "; ".join(lines)  # always one line, of bounded length (values quoted in it
        if len(message) > MAX_ERROR_CHARS:  # can be any size)
            message = message[: MAX_ERROR_CHARS - 3] + "..."
        print(f"robustfeat: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("robustfeat: interrupted", file=sys.stderr)
        return 130
