"""The carried site-packages folder: what the GPU image lacks (DeepSpeed, pydantic & co.), copied
here from the project's venv (``--prepare-carry``) and put on ``sys.path`` there."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

from gpu_common import REPO

CARRY_DIR = REPO / ".cache" / "gpu-check" / "site"

# Distributions the learner needs that the GPU image lacks (or may lack): all pure Python except
# pydantic-core (fetched for the target Python) and msgpack (falls back to its pure-Python module).
CARRIED_DISTS = (
    "deepspeed", "hjson", "einops", "msgpack", "py-cpuinfo", "pydantic", "pydantic-core",
    "annotated-types", "typing-inspection", "typing-extensions",
)  # fmt: skip
# Imported first: if the image has an older copy of one that the others cannot use, the carried
# folder goes first instead (see use_carried_site).
EARLY_IMPORTS = ("typing_extensions", "annotated_types", "typing_inspection", "pydantic_core", "pydantic")


def use_carried_site() -> str:
    """Append the carried folder to sys.path (the image's own packages win); if the image's copies
    cannot import pydantic (an old typing_extensions, say), put the folder first instead."""
    if not CARRY_DIR.is_dir():
        return "none"
    site = str(CARRY_DIR)
    sys.path.append(site)
    try:
        for name in EARLY_IMPORTS:
            __import__(name)
        return "appended"
    except Exception:  # noqa: BLE001 - any failure: retry with the carried copies first
        for mod in list(sys.modules):
            if mod.split(".")[0] in EARLY_IMPORTS:
                del sys.modules[mod]
        sys.path.remove(site)
        sys.path.insert(0, site)
        return "prepended"


def _copy_dist(dist: metadata.Distribution) -> int:
    """Copy one installed distribution's files into CARRY_DIR; the number copied."""
    copied = 0
    for rel in dist.files or []:
        parts = Path(rel).parts
        if parts[0] == ".." or "__pycache__" in parts or rel.suffix == ".pyc":
            continue  # console scripts, byte code
        src = Path(dist.locate_file(rel))
        if src.is_file():
            dst = CARRY_DIR / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            copied += 1
    return copied


def _add_pydantic_core_for(target_python: str) -> str | None:
    """Put pydantic-core's extension module for ``target_python`` next to this Python's (the wheel
    comes from pip); what was added, or None (the error printed) when it could not be fetched."""
    version = metadata.version("pydantic-core")
    tag = "cp" + target_python.replace(".", "")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", target_python, "--implementation", "cp", "--abi", tag,
               "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
               "--dest", tmp, f"pydantic-core=={version}"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("pydantic_core-*.whl"))
        if done.returncode != 0 or not wheels:
            print(f"error: could not fetch pydantic-core {version} for Python {target_python}:\n"
                  f"{done.stderr.strip()}", file=sys.stderr)  # fmt: skip
            return None
        with zipfile.ZipFile(wheels[0]) as zf:
            so = [
                n
                for n in zf.namelist()
                if n.startswith("pydantic_core/_pydantic_core.") and n.endswith(".so")
            ]
            for member in so:
                (CARRY_DIR / member).write_bytes(zf.read(member))
        return f"{wheels[0].name}: {', '.join(so)}"


def prepare_carry(target_python: str) -> int:
    """Copy CARRIED_DISTS from this interpreter's environment into CARRY_DIR, and add pydantic-core's
    extension module built for ``target_python`` (e.g. 3.12) next to this Python's."""
    if CARRY_DIR.exists():
        shutil.rmtree(CARRY_DIR)
    CARRY_DIR.mkdir(parents=True)
    manifest: dict[str, Any] = {
        "made_with": platform.python_version(),
        "target_python": target_python,
        "dists": {},
    }
    for name in CARRIED_DISTS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            print(f"error: {name} is not installed in this environment ({sys.executable})", file=sys.stderr)
            return 1
        manifest["dists"][name] = {"version": dist.version, "files": _copy_dist(dist)}
    if f"{sys.version_info.major}.{sys.version_info.minor}" != target_python:
        extra = _add_pydantic_core_for(target_python)
        if extra is None:
            return 1
        manifest["dists"]["pydantic-core"]["extra"] = extra
    (CARRY_DIR / "gpu_check_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(p.stat().st_size for p in CARRY_DIR.rglob("*") if p.is_file())
    versions = ", ".join(f"{k} {v['version']}" for k, v in manifest["dists"].items())
    print(f"carried packages in {CARRY_DIR.relative_to(REPO)}: {size / 2**20:.1f} MiB ({versions})")
    print(f'carry it with the working tree: carry=["{CARRY_DIR.parent.relative_to(REPO)}"]')
    return 0
