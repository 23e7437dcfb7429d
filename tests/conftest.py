"""Test-wide settings: local Ray with the machine's token (as users run it), caches inside the test's
temp area."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from sftrl.ray_setup import use_local_token  # noqa: E402

# Every local Ray of the tests (the trainer's, the tests' own ray.init, `ray start --head`) requires
# the token that `sftrl` commands use.
use_local_token()

REPO = Path(__file__).resolve().parents[1]
TEST_MODELS = REPO / ".cache" / "test-models"
# Checkpoints are loaded only from configured roots: the tests' runs live in the temp area (a test
# that checks the refusal passes its own roots).
os.environ.setdefault("SFTRL_CHECKPOINT_ROOTS", os.pathsep.join([tempfile.gettempdir(), str(REPO)]))


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny text model, prepared once into a git-ignored cache shared across test runs."""
    from sftrl.models.testing import prepared_model

    return prepared_model("tiny", TEST_MODELS / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_vl_model() -> Path:
    from sftrl.models.testing import prepared_model

    return prepared_model("tiny-vl", TEST_MODELS)


@pytest.fixture(scope="session", autouse=True)
def registry_server(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server for the whole session (REDIS_URL), so runs never touch the user's registry."""
    from sftrl.registry import LocalRedis

    server = LocalRedis(tmp_path_factory.mktemp("redis"))
    url = server.start()
    previous = os.environ.get("REDIS_URL")
    os.environ["REDIS_URL"] = url
    yield url
    if previous is None:
        os.environ.pop("REDIS_URL", None)
    else:
        os.environ["REDIS_URL"] = previous
    server.release(force=True)


@pytest.fixture
def registry(registry_server: str):
    """The session's registry, emptied for this test."""
    from sftrl.registry import Registry

    reg = Registry(registry_server)
    reg.redis.flushdb()
    yield reg
    reg.close()


@pytest.fixture(scope="module", autouse=True)
def ray_stopped_after_each_module():
    """A module whose tests started Ray in this process (the trainer does, through init_ray) stops it
    when the module ends, so the next module's own ``ray.init()`` starts from a clean process."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def process_group_destroyed_at_the_end():
    """Learners built in this process share one gloo process group, as a rank's process does; it is
    destroyed when the session ends rather than left to the interpreter's teardown, which runs
    destructors in no set order (a test process once crashed at exit after every test had passed)."""
    yield
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
