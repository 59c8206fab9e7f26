"""Named per-dataset training settings (``mrdl train --recipe NAME``, ``mrdl embed-text --recipe NAME``).

A recipe sets what the paper and LViT choose per dataset: the (global) batch size, the learning
rate, lambda_3 (the weight of L_KL) and the prompt T_P; and the dataset's source resolution
(``source_mpp``, microns per pixel of the training images), which a run records in its checkpoints'
provenance so that whole-slide inference can resample a slide to the training scale. It is applied on top of a config (which
fixes the architecture and the schedule); explicit options (``--batch-size``, ``--kl-weight``,
``--lr``) win over the recipe. A run prints its recipe when it starts and stores it in its settings
and in every checkpoint's provenance. The prompt is part of the model, so the text-embedding file
must be built with the same recipe (``mrdl embed-text DATA --recipe NAME``).

Sources: batch 2 for MoNuSeg and GlaS and 24 for MosMedData+ (LViT, and the MRDL paper's setup);
lambda_3 = 1.0 for MoNuSeg and 0.1 for GlaS (the MRDL paper's text; it gives no value for the other
datasets, which keep the loss default 1.0); learning rates from LViT's public Config.py (1e-3 for
MoNuSeg and MosMedData+, 3e-4 for QaTa-COV19). QaTa-COV19's batch (24, as MosMedData+) and every
prompt are mrdl's choices: neither paper states them. MoNuSeg's 1000x1000 crops come from TCGA
slides scanned at 40x, about 0.25 um/px (Kumar et al. 2017); the other recipes leave ``source_mpp``
unset (GlaS's scanner resolution is not stated in the recipe's sources; CT and X-ray have no
microscope scale), and ``mrdl train --source-mpp`` supplies it where a dataset has one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import MRDLConfig


@dataclass(frozen=True)
class Recipe:
    """One dataset's settings."""

    name: str
    dataset: str
    batch_size: int
    lr: float
    kl_weight: float
    prompt: str
    source_mpp: float | None = None  # microns per pixel of the training images; None = not known

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    Recipe("monuseg", "MoNuSeg (H&E nuclei, 1000x1000)", batch_size=2, lr=1e-3, kl_weight=1.0,
           prompt="a histopathology image of cell nuclei", source_mpp=0.25),
    Recipe("glas", "GlaS (H&E colon glands)", batch_size=2, lr=1e-3, kl_weight=0.1,
           prompt="a histopathology image of colon glands"),
    Recipe("mosmedplus", "MosMedData+ (lung CT, COVID-19 lesions)", batch_size=24, lr=1e-3, kl_weight=1.0,
           prompt="a chest CT slice with COVID-19 lung infection"),
    Recipe("qata-cov19", "QaTa-COV19 (chest X-ray, COVID-19 lesions)", batch_size=24, lr=3e-4, kl_weight=1.0,
           prompt="a chest X-ray with COVID-19 lung infection"),
)}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (case-insensitive); an unknown name lists the known ones."""
    recipe = RECIPES.get(name.lower())
    if recipe is None:
        raise ValueError(f"no recipe named {name!r}; available: {', '.join(RECIPES)}")
    return recipe


def apply_recipe(config: MRDLConfig, recipe: Recipe | None) -> MRDLConfig:
    """``config`` with the recipe's batch size, learning rate, lambda_3 and prompt (unchanged for None)."""
    if recipe is None:
        return config
    config = config.replace_model(prompt=recipe.prompt)
    return dataclasses.replace(
        config, train=dataclasses.replace(config.train, batch_size=recipe.batch_size, lr=recipe.lr),
        loss=dataclasses.replace(config.loss, kl_weight=recipe.kl_weight))


def describe(recipe: Recipe | None, config: MRDLConfig) -> str:
    """One line for the start of a run: the recipe and the settings the run really uses."""
    head = f"recipe {recipe.name} ({recipe.dataset})" if recipe is not None else f"no recipe (config {config.name}'s own settings)"
    t = config.train
    period = t.lr_period or t.epochs
    return (f"{head}: batch {t.batch_size}, lr {t.lr:g}, lambda_3 {config.loss.kl_weight:g}, "
            f"prompt {config.model.prompt!r}; schedule {t.lr_schedule} period {period} epochs, min lr {t.min_lr:g}; "
            f"early stop after {t.patience} epochs without a Val gain{_above(t)}, epoch cap {t.epochs}")


def _above(train) -> str:
    """The clause of a non-zero min_delta: ' above 0.001' (absolute) or ' above 0.5% of the best' (relative)."""
    if not train.min_delta:
        return ""
    return f" above {train.min_delta:g}" if train.min_delta_mode == "absolute" else \
        f" above {100 * train.min_delta:g}% of the best"
