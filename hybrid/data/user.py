"""User training data through Hugging Face `datasets`, in one documented schema.

Schema (one row per question per language; rows sharing `id` are translations of one another):

    id        str   question id shared by all translations (the sampler never puts two in one batch)
    lang      str   ISO 639-1 code of this row's query *and* positive
    query     str   the question
    positive  str   the passage that answers it, in the same language
    negative  str   optional hard negative in the same language (empty or null: none)

This is the shape of translated QA data such as mMARCO: build one row per (id, language).
"""

from __future__ import annotations

from pathlib import Path

from hybrid import storage
from hybrid.data.corpus import TrainingPair
from hybrid.languages import check_language_code

REQUIRED_COLUMNS = ("id", "lang", "query", "positive")
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _load_rows(source: str, split: str):
    import datasets  # imported here: loading the packaged corpora does not need it

    if storage.is_uri(source):  # s3://...: every node reads its own copy
        source = str(storage.local_copy(source))
    path = Path(source)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise ValueError(
                f"{source}: unsupported file type {path.suffix!r}; use one of "
                f"{sorted(_FILE_BUILDERS)} or a folder saved with `Dataset.save_to_disk`."
            )
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    if source.startswith((".", "/", "~")) or source.endswith(tuple(_FILE_BUILDERS)):
        raise FileNotFoundError(
            f"training data {source} does not exist; give an existing file ({sorted(_FILE_BUILDERS)}) "
            "or a `save_to_disk` folder, or a hub dataset name where the hub is reachable."
        )
    return datasets.load_dataset(source, split=split)  # a hub name: needs network access to the hub


def load_training_pairs(source: str, split: str = "train") -> list[TrainingPair]:
    """Rows of a local file, a `save_to_disk` folder or a hub dataset, validated against the schema."""
    rows = _load_rows(source, split)
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.column_names]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; the schema is id, lang, query, positive "
            f"[, negative] (found {rows.column_names}). Rename your columns to match."
        )
    pairs = []
    for i, row in enumerate(rows):
        for column in REQUIRED_COLUMNS:
            if not isinstance(row[column], str) or not row[column].strip():
                raise ValueError(
                    f"{source}: row {i} has an empty or non-text {column!r} ({row[column]!r}). "
                    "Every row needs non-empty id, lang, query and positive."
                )
        if row.get("negative") is not None and not isinstance(row["negative"], str):
            raise ValueError(
                f"{source}: row {i} has a non-text 'negative' ({row['negative']!r}); give a passage or leave it empty."
            )
        try:
            check_language_code(row["lang"])
        except ValueError as e:
            raise ValueError(f"{source}: row {i}: {e}") from None
        pairs.append(TrainingPair(row["id"], row["lang"], row["query"], row["positive"], row.get("negative") or None))
    if not pairs:
        raise ValueError(f"{source}: split {split!r} has no rows.")
    return pairs
