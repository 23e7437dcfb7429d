"""Files named by options (V-IRL ``routes``, VisualQA ``dataset``, and the image files a dataset's
rows name) are read only if they are regular files of at most ``MAX_FILE_BYTES``: a FIFO, a device
or a folder is refused at once with a clear ConfigError, never waited on or read forever."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from services.envs.virl import VIRLEnv
from services.envs.virl.published import load_published_routes
from services.envs.visual_qa import VisualQAEnv, load_benchmark
from sftrl.config import ConfigError
from sftrl.files import MAX_FILE_BYTES, read_bounded

pytestmark = pytest.mark.hostile

Reader = Callable[[Path], object]
# every reader of a file an option names, by the suffix its file needs
READERS: dict[str, tuple[str, Reader]] = {
    "virl-routes": ("routes.json", lambda p: load_published_routes(p, "New York")),
    "virl-env": ("routes.json", lambda p: VIRLEnv(routes=str(p))),
    "vqa-jsonl": ("bench.jsonl", load_benchmark),
    "vqa-json": ("bench.json", load_benchmark),
    "vqa-parquet": ("bench.parquet", load_benchmark),
    "vqa-env": ("bench.jsonl", lambda p: VisualQAEnv(dataset=str(p))),
}


def _refused_at_once(read: Callable[[], object], unblock: Path | None = None, seconds: float = 10) -> str:
    """The ConfigError message ``read()`` raises, in a thread given ``seconds``; a read still blocked
    then fails the test (after opening ``unblock``, a FIFO, for writing so the thread can end)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            read()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:
            os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))  # the reader gets EOF
        pytest.fail(f"the read was still blocked after {seconds} s")
    error = outcome[0]
    assert isinstance(error, ConfigError), f"expected a ConfigError, got {error!r}"
    return str(error)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path, reader: str) -> None:
    name, read = READERS[reader]
    fifo = tmp_path / name
    os.mkfifo(fifo)
    message = _refused_at_once(lambda: read(fifo), unblock=fifo)
    assert f"{fifo} is not a regular file (a FIFO)" in message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reader", sorted(READERS))
def test_dev_zero_and_a_folder_are_refused(tmp_path: Path, reader: str) -> None:
    name, read = READERS[reader]
    zero = tmp_path / name
    zero.symlink_to("/dev/zero")  # a link with the suffix the reader needs: the device is what counts
    assert "is not a regular file (a device or socket)" in _refused_at_once(lambda: read(zero))
    folder = tmp_path / "folder" / name
    folder.mkdir(parents=True)
    assert f"{folder} is not a regular file (a folder)" in _refused_at_once(lambda: read(folder))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_file_just_over_the_bound_is_refused_unread(tmp_path: Path, reader: str) -> None:
    name, read = READERS[reader]
    big = tmp_path / name
    with big.open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    message = _refused_at_once(lambda: read(big))
    assert f"{big} is larger than {MAX_FILE_BYTES} bytes" in message


def test_regular_files_under_the_bound_still_load() -> None:
    repo = Path(__file__).resolve().parents[1]
    assert load_published_routes(repo / "services" / "envs" / "data" / "virl_example_routes.json", "New York")
    for sample in ("visual_qa_sample.jsonl", "visual_qa_sample.parquet"):  # images by path and inline
        images = [item.load_image() for item in load_benchmark(repo / "tests" / "data" / sample)]
        assert any(image is not None and image.size[0] > 0 for image in images)


@pytest.mark.timeout(60)
def test_an_image_file_a_dataset_row_names_is_bounded_too(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "picture.png")
    bench = tmp_path / "bench.jsonl"
    bench.write_text('{"question": "how many?", "answer": "3", "image": "picture.png"}\n')
    message = _refused_at_once(lambda: load_benchmark(bench), unblock=tmp_path / "picture.png")
    assert "row 0" in message and "picture.png is not a regular file (a FIFO)" in message


def test_an_image_a_dataset_row_names_outside_its_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(b"not for clients")
    (tmp_path / "data").mkdir()
    bench = tmp_path / "data" / "bench.jsonl"
    for name in ("../secret.png", str(tmp_path / "secret.png")):
        bench.write_text(json.dumps({"question": "how many?", "answer": "3", "image": name}) + "\n")
        with pytest.raises(ConfigError, match="lies outside the dataset's folder"):
            load_benchmark(bench)


# -- the checks hold against a file changed between the check and the read -----------------------------


def _on_open(monkeypatch: pytest.MonkeyPatch, path: Path, change: Callable[[], None]) -> None:
    """Run ``change()`` when ``path`` is opened: another process acting after the checks on its name."""
    real_open = os.open

    def opening(name: object, *args: object, **kwargs: object) -> int:
        if Path(str(name)) == path:
            change()
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", opening)


@pytest.mark.timeout(60)
def test_a_file_swapped_for_a_fifo_after_the_check_is_refused_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "routes.json"
    path.write_text("[]")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _on_open(monkeypatch, path, lambda: os.replace(fifo, path))
    message = _refused_at_once(lambda: read_bounded(path, "V-IRL route file"), unblock=path)
    assert f"{path} is not a regular file (a FIFO)" in message


def test_a_file_that_grows_after_the_check_is_read_only_to_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bench.jsonl"
    path.write_bytes(b"x" * 10)
    assert read_bounded(path, "benchmark file", limit=10) == b"x" * 10  # at the bound: read
    _on_open(monkeypatch, path, lambda: path.write_bytes(b"x" * 1000))
    with pytest.raises(ConfigError, match=f"{path} is larger than 10 bytes"):
        read_bounded(path, "benchmark file", limit=10)
