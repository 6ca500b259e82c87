"""Where corpora come from: XQuAD-R packaged in the repository, MLQA-R downloaded on demand (or a mirror).

MLQA-R is CC BY-NC 4.0 (non-commercial) and is the out-of-domain zero-shot set: never train or select
on it. Downloads are pinned to one commit and checked file by file against sha256 sums.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from hybrid import manifest
from hybrid.cache import cache_dir
from hybrid.data.corpus import ParallelCorpus
from hybrid.data.lareqa import find_language_files, load_lareqa

PACKAGED_DATA = Path(__file__).resolve().parents[2] / "data"

MLQA_R_COMMIT = "354d67d1cd066854cdfbf5ad0e6105528976141d"
MLQA_R_URL = f"https://raw.githubusercontent.com/google-research-datasets/lareqa/{MLQA_R_COMMIT}/mlqa-r"
MLQA_R_SHA256 = {
    "ar": "2132fbc03208535c0fe01f2e2c5121d06f9c2aa799af93b0a719dbc105bdf137",
    "de": "ce9454dc5aa6f2d85c23cd6e49cb367fbb7c4c6e62d7f71e355c6b5dae4d0886",
    "en": "fedd9a5cc0848dda80caf84aa36f482adaae230526a3f6e9e86926a93ef3b1e4",
    "es": "70ecba276b8c96a692b120693a595d076ce94ad21d4b28311538a9fcbfe0f9d7",
    "hi": "4dd0fb3c06f737a5481d705bc1dcac7876712a5815c9265908fbb3a0696cb654",
    "vi": "9d3baff6ba03e6793b25594217265ea59a136b9733833dca8a9582a84a78ff85",
    "zh": "57f01d2fff50cf3392805635b01445339f225ad5bf28ba8443b12f8dbd1e69dc",
}
MLQA_R_ENV = "HYBRID_SWEEP_MLQA_R_DIR"


def download_mlqa_r(dest: Path, base_url: str = MLQA_R_URL, timeout_s: float = 60.0) -> Path:
    """Fetch the MLQA-R files into `dest` (skipping verified ones); each is checked before it is kept."""
    dest.mkdir(parents=True, exist_ok=True)
    for lang, digest in MLQA_R_SHA256.items():
        target = dest / f"{lang}.json"
        if target.exists() and manifest.sha256(target) == digest:
            continue
        url = f"{base_url}/{lang}.json"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                payload = response.read()
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise ConnectionError(
                f"could not download MLQA-R file {url} ({e}). On an offline machine, copy the lareqa "
                f"repository's mlqa-r/*.json (commit {MLQA_R_COMMIT[:7]}) into a folder and pass it with "
                f"--data-dir or the {MLQA_R_ENV} environment variable."
            ) from e
        if hashlib.sha256(payload).hexdigest() != digest:
            raise ValueError(
                f"{url}: sha256 mismatch (expected {digest}); the download is corrupt or the "
                "mirror serves other files. Nothing was kept; retry or fix the mirror."
            )
        with tempfile.NamedTemporaryFile(dir=dest, delete=False) as tmp:
            tmp.write(payload)
        os.replace(tmp.name, target)  # atomic: a crash never leaves a half-written file under the real name
    return dest


ORIGINS = {
    "xquad-r": "https://github.com/google-research-datasets/lareqa/tree/master/xquad-r",
    "mlqa-r": MLQA_R_URL,
    "miracl": "https://huggingface.co/datasets/miracl/miracl",
}


def origin(name: str) -> str:
    """Where a named corpus comes from (its public URL); a folder given as the dataset is its own origin."""
    return ORIGINS.get(name, name)


def mlqa_r_dir(data_dir: Path | None = None, base_url: str = MLQA_R_URL) -> Path:
    """A folder holding MLQA-R: `data_dir`, else `$HYBRID_SWEEP_MLQA_R_DIR`, else the download cache."""
    local = data_dir or (Path(os.environ[MLQA_R_ENV]) if os.environ.get(MLQA_R_ENV) else None)
    if local is not None:
        if not find_language_files(local):
            raise FileNotFoundError(
                f"{local}: no MLQA-R {{lang}}.json files there. Point --data-dir / "
                f"{MLQA_R_ENV} at a copy of the lareqa repository's mlqa-r/ folder."
            )
        return local
    return download_mlqa_r(cache_dir() / "data" / "mlqa-r", base_url)


def load_corpus(name: str, languages: tuple[str, ...] | None = None, data_dir: Path | None = None) -> ParallelCorpus:
    """Load a corpus by name (`xquad-r`, `mlqa-r`) or by the path of a folder of LAReQA-format files."""
    if name == "xquad-r":
        return load_lareqa(data_dir or PACKAGED_DATA / "xquad-r", name, languages)
    if name == "mlqa-r":
        return load_lareqa(mlqa_r_dir(data_dir), name, languages)
    if Path(name).is_dir():
        return load_lareqa(Path(name), Path(name).name, languages)
    raise ValueError(
        f"unknown dataset {name!r}: use 'xquad-r' (packaged), 'mlqa-r' (downloaded on demand) "
        "or the path of a folder of LAReQA-format {lang}.json files."
    )
