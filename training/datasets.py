"""Where the benchmark datasets live: folders of ``<name>_TRAIN`` / ``_TEST`` files (``.ts`` or ``.tsv``)."""

from __future__ import annotations

import os
from pathlib import Path

from training.model.data import DataError

SPLIT_SUFFIXES = (".ts", ".tsv")  # the archive's formats: UEA .ts, UCR 2018 .tsv


def split_files(folder: Path) -> tuple[Path, Path] | None:
    """``folder/<name>_TRAIN`` and ``_TEST`` (``.ts``, else ``.tsv``), or None when the folder holds neither pair."""
    for suffix in SPLIT_SUFFIXES:
        train, test = folder / f"{folder.name}_TRAIN{suffix}", folder / f"{folder.name}_TEST{suffix}"
        if train.is_file() and test.is_file():
            return train, test
    return None


def dataset_folders(root: Path) -> dict[str, Path]:
    """Dataset name -> folder, for ``root/<name>/`` and one level of grouping ``root/<group>/<name>/``.

    A folder holds ``<name>_TRAIN`` and ``<name>_TEST`` as ``.ts`` or ``.tsv``; a name found twice
    keeps its top-level folder.
    """
    if not root.is_dir():
        return {}
    found: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if not p.is_dir():
            continue
        if split_files(p):
            found.setdefault(p.name, p)
            continue
        for q in sorted(p.iterdir()):
            if q.is_dir() and split_files(q):
                found.setdefault(q.name, q)
    return found


def discover_datasets(root: Path) -> list[str]:
    """Names of the dataset folders under ``root`` (see :func:`dataset_folders`), sorted."""
    return sorted(dataset_folders(root))


def dataset_split_files(name: str, datasets: Path) -> tuple[Path, Path]:
    """The training and test files of dataset ``name`` under ``datasets``."""
    folder = dataset_folders(datasets).get(name)
    files = split_files(folder) if folder else None
    if files is None:
        raise DataError(f"no {name}_TRAIN/_TEST (.ts or .tsv) under {datasets}")
    return files


def default_datasets() -> Path:
    """``$BIGRU_DATASETS``, else ``../shared/datasets`` next to the checkout (as in the repository layout)."""
    env = os.environ.get("BIGRU_DATASETS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    for cand in (here.parent / "shared" / "datasets", here.parent.parent / "shared" / "datasets"):
        if cand.is_dir():
            return cand
    return here.parent / "shared" / "datasets"
