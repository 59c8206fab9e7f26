"""``mrdl embed-text``: precompute the CLIP text features of a dataset (thin CLI over embeddings.py)."""

from __future__ import annotations

import functools
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import click

from mrdl.data.dataset import TableLimits


@contextmanager
def loud_random_tower_warnings() -> Iterator[None]:
    """Show warnings as they happen; a randomly initialised CLIP tower in bold red on stderr."""
    from mrdl.text import RandomTextTowerWarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, RandomTextTowerWarning):
            click.secho(f"WARNING: {message}", fg="red", bold=True, err=True)
        else:
            click.echo(warnings.formatwarning(message, category, filename, lineno, line).rstrip(), err=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", RandomTextTowerWarning)
        warnings.showwarning = show
        yield


def table_limit_options(command: Callable) -> Callable:
    """Add --max-description-chars, --max-table-mib and --max-rows; the command receives ``table_limits``.

    Apply it directly above the function (innermost), so it wraps the function before click sees it.
    """
    defaults = TableLimits()

    @functools.wraps(command)
    def with_limits(*args, max_description_chars: int, max_table_mib: float, max_rows: int, **kwargs):
        return command(*args, table_limits=TableLimits(max_description_chars=max_description_chars,
                                                       max_table_mib=max_table_mib, max_rows=max_rows), **kwargs)

    options = (
        click.option("--max-description-chars", type=click.IntRange(min=1), show_default=True,
                     default=defaults.max_description_chars, help="Longest text of a description-table cell."),
        click.option("--max-table-mib", type=click.FloatRange(min=0, min_open=True), show_default=True,
                     default=defaults.max_table_mib,
                     help="Largest description table, and largest unzipped contents of an xlsx, in MiB."),
        click.option("--max-rows", type=click.IntRange(min=1), show_default=True, default=defaults.max_rows,
                     help="Most rows of a description table."),
    )
    for option in reversed(options):
        with_limits = option(with_limits)
    return with_limits


@click.command("embed-text")
@click.argument("data_root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--clip-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Local open_clip checkpoint in safetensors format for the text tower (its sha256 is recorded).")
@click.option("--pretrained", default=None,
              help="open_clip pretrained tag, from the Hugging Face cache or hub [default: the paper's weights, "
                   "'openai' for ViT-B-32].")
@click.option("--random-init", is_flag=True,
              help="Use a randomly initialised tower instead of pretrained weights: features WITHOUT language "
                   "meaning (tests, demos).")
@click.option("--config", "config_name", default="base", show_default=True,
              help="Config name or JSON file: fixes the CLIP model, its width and the prompt.")
@click.option("--recipe", default=None,
              help="Dataset recipe whose prompt to embed (as `mrdl train --recipe`): monuseg, glas, mosmedplus, "
                   "qata-cov19 [default: the config's prompt].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file [default: DATA_ROOT/mrdl_text_<clip model>_<width>.safetensors].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random initialisation (with --random-init).")
@table_limit_options
def embed_text(data_root: Path, clip_weights: Path | None, pretrained: str | None, random_init: bool,
               config_name: str, recipe: str | None, out: Path | None, seed: int, table_limits: TableLimits) -> None:
    """Embed every description of DATA_ROOT (LViT layout) and the prompt with the frozen CLIP text tower.

    Training reads the resulting file and never runs CLIP. The tower's weights are the paper's
    (open_clip ViT-B-32 'openai') unless --clip-weights or --pretrained say otherwise; they come from
    the Hugging Face cache or hub, and where neither has them the command fails, naming both ways
    to provide them (it never waits long for a network that is absent). --random-init builds a
    random tower instead, whose features carry no language meaning. --clip-weights takes a
    safetensors file; pickle checkpoints (.pt, .bin) are refused with the command that converts one.
    """
    from mrdl.config import load_config
    from mrdl.data.dataset import DatasetError
    from mrdl.data.embeddings import compute_embeddings
    from mrdl.recipes import apply_recipe, get_recipe

    if clip_weights is not None and pretrained is not None:
        raise click.UsageError("give either --clip-weights or --pretrained, not both")
    if random_init and (clip_weights is not None or pretrained is not None):
        raise click.UsageError("--random-init takes no weights: drop --clip-weights / --pretrained, or --random-init")
    try:
        config = apply_recipe(load_config(config_name), get_recipe(recipe) if recipe else None)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    with loud_random_tower_warnings():
        try:
            path = compute_embeddings(data_root, config, out=out, clip_weights=clip_weights, pretrained=pretrained,
                                      random_init=random_init, seed=seed, limits=table_limits)
        except (DatasetError, FileNotFoundError, ValueError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {path}")
