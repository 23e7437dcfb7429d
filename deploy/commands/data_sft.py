"""``sftrl data sft``: expert demonstrations, with a progress bar and the resolved config beside them."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from services.envs import resolve_options
from services.envs.demonstrations import DemonstrationWriter, generate_demonstrations
from sftrl.config import SFTDataConfig, write_resolved_config


def output_paths(config: SFTDataConfig) -> tuple[Path | None, Path | None, Path]:
    """(LLaVA JSON path, chat JSONL path, image folder) for the configured ``out``."""
    out = Path(config.out)
    stem = out.with_suffix("") if out.suffix in (".json", ".jsonl") else out
    llava = stem.with_suffix(".json") if "llava" in config.formats else None
    chat = stem.with_suffix(".jsonl") if "chat" in config.formats else None
    return llava, chat, stem.parent / f"{stem.name}_images"


def write_sft_data(config: SFTDataConfig, console: Console) -> tuple[Path | None, Path | None]:
    # Validate before anything is written, and record every option, defaults included.
    config.env.options = resolve_options(config.env.id, config.env.options)
    llava, chat, images = output_paths(config)
    stem = Path(config.out).with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    demos = generate_demonstrations(
        config.env.id, config.env.options, config.episodes, config.seed, config.revision_fraction
    )
    columns = (TextColumn("demonstrations"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    revisions = 0
    with (
        DemonstrationWriter(llava, chat, images) as writer,
        Progress(*columns, console=console, transient=True) as progress,
    ):
        task = progress.add_task("demos", total=config.episodes)
        for demo in demos:
            writer.add(demo)
            revisions += int(demo.meta["revision"])
            progress.advance(task)
    cfg_path = write_resolved_config(config, stem.parent, f"{stem.name}.resolved_config.yaml")
    console.print(f"wrote {writer.count} episodes ({revisions} with revision) from {config.env.id}")
    for label, path in (("LLaVA JSON", llava), ("chat JSONL", chat)):
        if path is not None:
            console.print(f"  {label}: {path}")
    if images.exists():
        console.print(f"  images: {images}/")
    console.print(f"  resolved config: {cfg_path}")
    return llava, chat
