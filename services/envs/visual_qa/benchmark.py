"""Load visual-QA benchmark files (JSONL, JSON or parquet) in the MathVista / MathVerse style.

Accepted row fields (first present name wins):
  id:        id | pid | question_id | sample_index | problem_index   (default: "<file stem>-<row>")
  question:  question | question_for_eval | query | problem
  image:     decoded_image | image | image_path | img   -- base64 PNG/JPEG text (or a data: URI),
             raw bytes, {"bytes": ..., "path": ...} as HF parquet exports store images, or a file
             path relative to the benchmark file
  choices:   choices | options   (list, {"A": ...} mapping, JSON list text, or null)
  answer:    answer   (text or number; for choices: the letter or the choice text)
  answer_type (integer/float/number/text/list/choice), question_type (multi_choice/free_form)
  tolerance (absolute) | precision (decimal places, MathVista), difficulty | level, kind | category

Every problem raises :class:`ConfigError` naming the file and the row. Images are checked when the
file is loaded (header, pixel count against decompression bombs, integrity) and decoded on use.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from services.verifier.visual_qa import DEFAULT_TOLERANCE, LETTERS, AnswerType, QATask, parse_number
from sftrl.config import ConfigError
from sftrl.files import read_bounded

MAX_IMAGE_PIXELS = 40_000_000  # far above any benchmark figure, far below a decompression bomb
MAX_IMAGE_BYTES = 64 * 1024 * 1024
ID_KEYS = ("id", "pid", "question_id", "sample_index", "problem_index")
QUESTION_KEYS = ("question", "question_for_eval", "query", "problem")
IMAGE_KEYS = ("decoded_image", "image", "image_path", "img")
CHOICE_KEYS = ("choices", "options")
NUMBER_TYPES = {"integer", "int", "float", "number", "numeric"}
TEXT_TYPES = {"text", "str", "string", "list"}
CHOICE_TYPES = {"choice", "multi_choice", "multi-choice", "multiple_choice", "multiple-choice"}

ImageSource = bytes | Path


@dataclass(frozen=True)
class BenchmarkItem:
    question_id: str
    question: str
    choices: tuple[str, ...] | None
    answer: str
    answer_type: AnswerType
    tolerance: float
    difficulty: int | None
    kind: str
    image_source: ImageSource | None
    where: str  # "<file> row <n>", for error messages

    def task(self) -> QATask:
        return QATask(self.question_id, self.answer, self.choices, self.answer_type, tolerance=self.tolerance)

    def load_image(self) -> Image.Image | None:
        """The decoded RGB image (``None`` for a text-only row)."""
        if self.image_source is None:
            return None
        return decode_image(self.image_source, self.where, full=True)


def _first(row: Mapping[str, Any], keys: Iterable[str]) -> tuple[str | None, Any]:
    for key in keys:
        if key in row and row[key] is not None:
            return key, row[key]
    return None, None


def _open(source: ImageSource, where: str) -> Image.Image:
    name = f"image file {source}" if isinstance(source, Path) else "the image"
    data = _read_image_file(source, where) if isinstance(source, Path) else source
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ConfigError(f"{where}: {name} is not a readable PNG/JPEG ({exc})") from None


def _read_image_file(path: Path, where: str) -> bytes:
    """A row's image file, bounded like a benchmark (a FIFO or device named by a row never blocks)."""
    try:
        return read_bounded(path, f"{where}: image file", MAX_IMAGE_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{where}: image file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{where}: image file {path} is not readable ({exc.strerror or exc})") from None


def decode_image(source: ImageSource, where: str, full: bool) -> Image.Image:
    """Open an image with a pixel budget; ``full`` decodes it to RGB, else only checks integrity."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = _open(source, where)
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS or width <= 0 or height <= 0:
                raise ConfigError(
                    f"{where}: image of {width}x{height} pixels exceeds the {MAX_IMAGE_PIXELS} limit"
                )
            if not full:
                image.verify()
                return image
            return image.convert("RGB")
        except ConfigError:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ConfigError(f"{where}: image rejected as a decompression bomb ({exc})") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:  # PIL reports corruption in many ways
            raise ConfigError(f"{where}: the image is corrupt ({exc})") from None


def _image_source(value: Any, base_dir: Path, where: str) -> ImageSource:
    if isinstance(value, Mapping):  # HF datasets' Image feature: {"bytes": ..., "path": ...}
        if value.get("bytes") is not None:
            return _image_source(value["bytes"], base_dir, where)
        if value.get("path"):
            return _image_source(str(value["path"]), base_dir, where)
        raise ConfigError(f"{where}: image mapping has neither 'bytes' nor 'path'")
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) > MAX_IMAGE_BYTES:
            raise ConfigError(f"{where}: image is larger than {MAX_IMAGE_BYTES} bytes")
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: image must be base64 text, bytes, a path or a {{'bytes': ...}} mapping")
    text = value.strip()
    if text.startswith("data:"):
        text = text.partition(",")[2]
    elif len(text) < 1024 and ("." in text or (base_dir / text).exists()):  # base64 never holds "."
        path = Path(text) if Path(text).is_absolute() else base_dir / text
        # a dataset on a shared volume names its own images: nothing outside its folder is opened
        if not path.resolve().is_relative_to(base_dir.resolve()):
            raise ConfigError(f"{where}: image {text!r} lies outside the dataset's folder")
        return path
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ConfigError(f"{where}: image text is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: image text is neither a file path nor valid base64") from None


def _choices(value: Any, where: str) -> tuple[str, ...] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"{where}: choices must be a list, got text that is not a JSON list") from None
    if isinstance(value, Mapping):  # {"A": "...", "B": "..."}
        value = [value[k] for k in sorted(value, key=str)]
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: choices must be a list or null, got {type(value).__name__}")
    if not value:
        return None
    if len(value) < 2 or len(value) > len(LETTERS):
        raise ConfigError(f"{where}: choices must hold 2..{len(LETTERS)} options, got {len(value)}")
    out = tuple(_scalar_text(v, f"{where}: choice") for v in value)
    if len({c.strip().casefold() for c in out}) != len(out):
        raise ConfigError(f"{where}: choices are not distinct: {list(out)}")
    return out


def _scalar_text(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{what} must be text or a number, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{what} must be finite, got {value}")
        return repr(value)
    return str(value).strip()


def _answer_type(
    row: Mapping[str, Any], choices: tuple[str, ...] | None, answer: str, where: str
) -> AnswerType:
    raw = str(row.get("answer_type") or "").strip().lower()
    qtype = str(row.get("question_type") or "").strip().lower()
    if choices and qtype not in ("free_form", "free-form"):
        return "choice"
    if raw in CHOICE_TYPES or qtype in CHOICE_TYPES:
        return "choice"  # letters only: the options are written inside the question (MathVerse)
    if raw in NUMBER_TYPES:
        if parse_number(answer) is None:
            raise ConfigError(f"{where}: answer {answer!r} is not a number but answer_type is {raw!r}")
        return "number"
    if raw in TEXT_TYPES:
        return "text"
    if raw:
        raise ConfigError(f"{where}: unknown answer_type {raw!r}")
    return "number" if parse_number(answer) is not None else "text"


def _tolerance(row: Mapping[str, Any], where: str) -> float:
    if row.get("tolerance") is not None:
        value = row["tolerance"]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ConfigError(f"{where}: tolerance must be a number >= 0, got {value!r}")
        return float(value)
    if row.get("precision") is not None:  # MathVista: answers are compared at this many decimals
        value = row["precision"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 12:
            raise ConfigError(f"{where}: precision must be a number of decimal places 0..12, got {value!r}")
        return 0.5 * 10 ** -int(value)
    return DEFAULT_TOLERANCE


def _difficulty(row: Mapping[str, Any]) -> int | None:
    _, value = _first(row, ("difficulty", "level"))
    try:
        level = int(value)
    except (TypeError, ValueError):
        return None
    return level if 1 <= level <= 5 else None


def parse_row(row: Any, index: int, path: Path, where: str) -> BenchmarkItem:
    if not isinstance(row, Mapping):
        raise ConfigError(f"{where}: a row must be an object, got {type(row).__name__}")
    _, question = _first(row, QUESTION_KEYS)
    if not isinstance(question, str) or not question.strip():
        raise ConfigError(f"{where}: missing field 'question' (or question_for_eval / query)")
    if row.get("answer") is None:
        raise ConfigError(f"{where}: missing field 'answer'")
    answer = _scalar_text(row["answer"], f"{where}: answer")
    if not answer:
        raise ConfigError(f"{where}: answer is empty")
    _, raw_id = _first(row, ID_KEYS)
    question_id = _scalar_text(raw_id, f"{where}: id") if raw_id is not None else f"{path.stem}-{index}"
    _, raw_choices = _first(row, CHOICE_KEYS)
    choices = _choices(raw_choices, where)
    answer_type = _answer_type(row, choices, answer, where)
    if answer_type != "choice":
        choices = None  # options of a free-form row are not offered as a multiple choice
    _, raw_image = _first(row, IMAGE_KEYS)
    image = _image_source(raw_image, path.parent, where) if raw_image is not None else None
    if image is not None:
        decode_image(image, where, full=False)
    _, kind = _first(row, ("kind", "category", "subject", "task"))
    item = BenchmarkItem(
        question_id=question_id,
        question=question.strip(),
        choices=choices,
        answer=answer,
        answer_type=answer_type,
        tolerance=_tolerance(row, where),
        difficulty=_difficulty(row),
        kind=str(kind) if isinstance(kind, (str, int)) else "benchmark",
        image_source=image,
        where=where,
    )
    try:
        item.task()
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return item


def _read_parquet(path: Path, data: bytes) -> list[tuple[str, Any]]:
    import pyarrow as pa  # only needed for parquet files
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except pa.ArrowException as exc:  # corrupt or truncated file
        raise ConfigError(f"{path}: not a valid parquet file ({exc})") from None
    return [(f"{path} row {i}", row) for i, row in enumerate(table.to_pylist())]


def _read_jsonl(path: Path, data: bytes) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    # the lines text mode would give (universal newlines), from the bytes already read
    for number, line in enumerate(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"), start=1):
        if line.strip():
            try:
                rows.append((f"{path} row {len(rows)} (line {number})", json.loads(line)))
            except ValueError as exc:
                raise ConfigError(f"{path} row {len(rows)} (line {number}): not valid JSON ({exc})") from None
    return rows


def _read_json(path: Path, data: bytes) -> list[tuple[str, Any]]:
    rows = json.loads(data.decode("utf-8"))
    if isinstance(rows, Mapping):  # MathVista's testmini.json: {pid: row}
        rows = [{"pid": key, **row} if isinstance(row, Mapping) else row for key, row in rows.items()]
    if not isinstance(rows, list):
        raise ConfigError(f"{path}: a JSON benchmark must be a list of rows or an id -> row mapping")
    return [(f"{path} row {i}", row) for i, row in enumerate(rows)]


_READERS = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def _read_rows(path: Path) -> list[tuple[str, Any]]:
    """(location, row) pairs; the location names the row for error messages. The file is read once,
    bounded (:func:`read_bounded`: a regular file of at most 64 MiB), and parsed from memory."""
    suffix = path.suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        raise ConfigError(f"{path}: unsupported benchmark format {suffix!r} (use .jsonl, .json or .parquet)")
    try:
        return reader(path, read_bounded(path, "benchmark file"))
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"benchmark file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read benchmark {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid {suffix[1:]} file ({exc})") from None


def load_benchmark(path: str | Path) -> tuple[BenchmarkItem, ...]:
    """All rows of a benchmark file, validated; raises :class:`ConfigError` naming file and row."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise ConfigError(f"{path}: the benchmark has no rows")
    items = []
    seen: dict[str, str] = {}
    for index, (where, row) in enumerate(rows):
        item = parse_row(row, index, path, where)
        if item.question_id in seen:
            raise ConfigError(f"{where}: id {item.question_id!r} repeats {seen[item.question_id]}")
        seen[item.question_id] = where
        items.append(item)
    return tuple(items)


def encode_png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_benchmark(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows (images already encoded by the caller) as JSONL or parquet, by file suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        raise ConfigError(f"{path}: can only write .jsonl or .parquet benchmarks")
    return path
