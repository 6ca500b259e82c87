"""Load LAReQA-format files (XQuAD-R, MLQA-R) into a `ParallelCorpus`.

Each `{lang}.json[.gz]` is SQuAD v1.1 plus `sentences` / `sentence_breaks` per paragraph. Every sentence
is a candidate; each question's answer must fall inside exactly one sentence span, and that sentence is
the question's relevant candidate in this language. Bad files fail here, naming the file and record.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from hybrid.data.corpus import Candidate, ParallelCorpus, Question
from hybrid.languages import check_language_code


class DataFormatError(ValueError):
    """A data file that does not follow the LAReQA format; the message names file, record and fix."""


def find_language_files(folder: Path) -> dict[str, Path]:
    """`{lang: path}` for every `{lang}.json` or `{lang}.json.gz` in `folder`."""
    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.json*")):
        lang = path.name.split(".")[0]
        if path.name in (f"{lang}.json", f"{lang}.json.gz"):
            files[lang] = path
    return files


def _read_json(path: Path) -> dict[str, Any]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise DataFormatError(
            f"{path}: not valid (gzipped) JSON ({e}). Re-download or re-export the file "
            "as SQuAD v1.1 JSON with `sentences` and `sentence_breaks`."
        ) from e


def _answer_sentence(path: Path, qa: dict[str, Any], breaks: list[list[int]]) -> int:
    answers = qa.get("answers") or []
    if len(answers) != 1:
        raise DataFormatError(
            f"{path}: question {qa.get('id')!r} has {len(answers)} answers; LAReQA "
            "format needs exactly one. Keep one answer per question."
        )
    start = answers[0]["answer_start"]
    for i, (lo, hi) in enumerate(breaks):
        if lo <= start < hi:
            return i
    raise DataFormatError(
        f"{path}: question {qa.get('id')!r}: answer_start {start} lies outside every "
        f"sentence span {breaks}. Fix `answer_start` or the paragraph's `sentence_breaks`."
    )


def load_language(path: Path, lang: str) -> tuple[list[Question], list[Candidate], dict[str, int]]:
    """Questions, candidates and `{question id: candidate index}` of one language file."""
    doc = _read_json(path)
    questions: list[Question] = []
    candidates: list[Candidate] = []
    answer_of: dict[str, int] = {}
    where = "top level"
    try:
        articles = doc["data"]
        for a_idx, article in enumerate(articles):
            title = article.get("title") or f"article-{a_idx}"
            for p_idx, para in enumerate(article["paragraphs"]):
                where = f"article {title!r} paragraph {p_idx}"
                sentences, breaks = para.get("sentences"), para.get("sentence_breaks")
                if not sentences or not breaks or len(sentences) != len(breaks):
                    raise DataFormatError(
                        f"{path}: {where}: needs non-empty `sentences` and `sentence_breaks` "
                        "of equal length (LAReQA format). Run the LAReQA sentence splitter."
                    )
                offset = len(candidates)
                candidates.extend(Candidate(lang, s, para["context"], title) for s in sentences)
                for qa in para["qas"]:
                    where = f"article {title!r} paragraph {p_idx} question {qa.get('id')!r}"
                    if qa["id"] in answer_of:
                        raise DataFormatError(
                            f"{path}: {where}: question id {qa['id']!r} occurs twice. "
                            "Ids must be unique within a language."
                        )
                    answer_of[qa["id"]] = offset + _answer_sentence(path, qa, breaks)
                    questions.append(Question(qa["id"], lang, qa["question"], title))
    except (KeyError, TypeError) as e:
        raise DataFormatError(
            f"{path}: {where}: missing or malformed field {e}. Expected SQuAD v1.1: "
            "data[].paragraphs[].{context, qas[].{id, question, answers}, sentences, "
            "sentence_breaks}."
        ) from e
    if not questions:
        raise DataFormatError(
            f"{path}: language {lang!r} has no questions. Remove the file or the language from your selection."
        )
    return questions, candidates, answer_of


def load_lareqa(folder: Path, name: str, languages: tuple[str, ...] | None = None) -> ParallelCorpus:
    """Load the `{lang}.json[.gz]` files of `folder` (all, or `languages`) into one parallel corpus."""
    files = find_language_files(folder)
    if not files:
        raise FileNotFoundError(
            f"{folder}: no {{lang}}.json or {{lang}}.json.gz files. Point the data "
            "directory at a folder of LAReQA-format files."
        )
    wanted = languages or tuple(files)
    for lang in wanted:
        check_language_code(lang)
    missing = [lang for lang in wanted if lang not in files]
    if missing:
        raise ValueError(
            f"{name}: no file for language(s) {missing} in {folder}; available: "
            f"{', '.join(sorted(files))}. Fix the language list."
        )
    questions, candidates, answers = {}, {}, {}
    for lang in wanted:
        questions[lang], candidates[lang], answer_of = load_language(files[lang], lang)
        for qid, idx in answer_of.items():
            answers.setdefault(qid, {})[lang] = idx
    return ParallelCorpus(name, questions, candidates, answers)
