"""``sftrl merge`` and ``sftrl merge-sweep``.

Their options take several values each (``--models A B C --weights 0.2 0.3 0.5``), which click's
options cannot; argparse parses them, behind thin click commands that hand over the raw arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sftrl.config import ConfigError, apply_overrides, build


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # a ConfigError, printed by the CLI like every other
        raise ConfigError(f"{self.prog}: {message}")


def merge_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sftrl merge",
        description="Merge HF-format models (prepared names, folders, checkpoints) with mergekit.",
        epilog="e.g. sftrl merge --method slerp --models runs/sft/checkpoints/step-000050 "
        "runs/rl/checkpoints/step-000020 --t 0.3 --out merged/",
    )
    p.add_argument("--method", required=True, choices=["linear", "slerp", "ties"])
    p.add_argument("--models", required=True, nargs="+", metavar="MODEL")
    p.add_argument("--weights", nargs="+", type=float, metavar="W", help="linear/ties: one per model")
    p.add_argument("--t", type=float, help="slerp: 0 gives the first model, 1 the second")
    p.add_argument("--base", help="ties: the model the task vectors are taken from")
    p.add_argument("--density", type=float, help="ties: fraction of each task vector kept (0.5)")
    p.add_argument(
        "--no-normalize", action="store_true", help="linear/ties: do not divide by the weights' sum"
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true")
    return p


def merge_command(console: Console, argv: list[str]) -> Path:
    from sftrl.models.merge import MergeSpec, merge_models

    args = merge_parser().parse_args(argv)
    spec = build(
        MergeSpec,
        {
            k: v
            for k, v in {
                "method": args.method,
                "models": args.models,
                "weights": args.weights,
                "t": args.t,
                "base": args.base,
                "density": args.density,
                "normalize": not args.no_normalize,
                "dtype": args.dtype,
            }.items()
            if v is not None
        },  # fmt: skip
        source="merge",
    )
    with console.status(f"{spec.method} merge of {len(spec.models)} models"):
        out = merge_models(spec, args.out, overwrite=args.overwrite)
    console.print(f"merged model: {out}", highlight=False)
    return out


def sweep_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sftrl merge-sweep",
        description="Merge two models at several ratios and evaluate each merge on ID/OOD suites.",
        epilog="Further settings as key=value (e.g. episodes=64 env.options.target=24 engine.device=cuda).",
    )
    p.add_argument(
        "--config", type=Path, help="a YAML sweep config (deploy.studies.merge_sweep.MergeSweepConfig)"
    )
    p.add_argument("--method", choices=["linear", "slerp", "ties"])
    p.add_argument("--models", nargs=2, metavar=("A", "B"))
    p.add_argument("--base", help="ties: the model both task vectors are taken from")
    p.add_argument("--density", type=float, help="ties: share of each task vector kept (default 0.5)")
    p.add_argument("--ratios", nargs="+", type=float, help="B's share: 0 gives A, 1 gives B")
    p.add_argument("--out", required=True, type=Path, help="folder for sweep.json and sweep.png")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p


def sweep_command(console: Console, argv: list[str]) -> dict[str, Any]:
    from deploy.commands.engine import prepare_engine
    from deploy.studies.merge_sweep import MergeSweepConfig, run_sweep
    from sftrl.config import read_yaml

    args = sweep_parser().parse_args(argv)
    data = read_yaml(args.config) if args.config else {}
    data.update({k: v for k, v in (("method", args.method), ("models", args.models), ("ratios", args.ratios),
                                   ("base", args.base), ("density", args.density)) if v is not None})  # fmt: skip
    config = build(MergeSweepConfig, apply_overrides(data, args.overrides), source="merge sweep")
    # both models exist and fit the context asked for; the precision is said once and recorded in the
    # sweep's resolved config (each merge's engine takes the merged model's own context when unset)
    config.engine, _ = prepare_engine(
        config.engine, console, config.sampling.max_tokens, models=config.models
    )
    table = Table(title=f"{config.method} merges: success by B's share")
    table.add_column("ratio", justify="right")
    for suite in config.suites:
        table.add_column(suite, justify="right")

    def show(row: dict[str, Any]) -> None:
        console.print(
            f"ratio {row['ratio']:.3f}: "
            + ", ".join(f"{s} {row.get(f'success/{s}', 0):.1%}" for s in config.suites),
            highlight=False,
        )
        table.add_row(f"{row['ratio']:.3f}", *(f"{row.get(f'success/{s}', 0):.1%}" for s in config.suites))

    result = run_sweep(config, args.out, on_row=show)
    console.print(table)
    console.print(f"results: {Path(args.out) / 'sweep.json'}\nplot: {result['plot']}", highlight=False)
    return result
