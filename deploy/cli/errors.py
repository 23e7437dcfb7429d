"""How the ``sftrl`` command line reports an error: one or two lines saying what is wrong and what
to do, never a traceback (``sftrl --debug ...`` or ``SFTRL_DEBUG=1`` shows it).

Every subcommand raises; :class:`deploy.cli.base.SftrlGroup` turns what it raised into a
:class:`CliError` here. Errors from inside Ray actors and vLLM arrive wrapped (a ``RayTaskError``
holding the actor's traceback as text, an ``ActorDiedError`` holding only that text, a RuntimeError
around a pydantic dump): the message shown is the root cause's.

Exit codes follow click's: 2 for a usage error (a bad value, an unknown name, a missing file: the
user's input), 1 for a failure (a service unreachable, an engine that crashed), 1 on Ctrl-C
("Aborted!").
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import IO, Any

import click

from sftrl.config import ConfigError

USAGE = 2
FAILURE = 1
# what a user's input causes: unknown names, bad values, missing files
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
)
# what sftrl's own code raises with a message for the user
WRITTEN_FOR_USERS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError)
# the packages whose messages are written for users (a foreign library's are shown with a hint)
OWN_CODE = tuple(
    str(Path(__file__).resolve().parents[2] / pkg) + os.sep
    for pkg in ("sftrl", "services", "deploy", "bench")
)
DEBUG_HINT = "(run `sftrl --debug ...` or set SFTRL_DEBUG=1 to see the traceback)"
_FRAME = re.compile(r'^\s+File "')
_FILE = re.compile(r'^\s+File "([^"]+)"', re.M)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
OWN_MODULES = ("sftrl.", "services.", "deploy.", "bench.")
USER_ERROR_NAMES = {
    cls.__name__ for cls in (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)
} | {"ConfigError", "ValidationError", "EvalInputError"}
_EXC_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*): (?P<message>.*)$", re.S)


class CliError(click.ClickException):
    """An error the command line shows as ``error: <message>`` and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = USAGE):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(
            click.style("error:", fg="red", bold=True) + " " + self.format_message(), file=file, err=True
        )


def _ray_cause(exc: BaseException) -> BaseException | None:
    """The exception a Ray task raised, inside the ``RayTaskError`` that carries it (which is also an
    instance of the cause's own class, with the remote traceback as its text)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) and cause is not exc else None


def _wraps(exc: BaseException, cause: BaseException) -> bool:
    """Whether ``exc`` only wraps ``cause`` (``raise RuntimeError(f"...: {exc}") from exc``, its text
    holding the cause's dump); a library's own error raised from a lower one (redis's "Error 111
    connecting to host:port" from the socket's "Connection refused") says more than what is below it."""
    below = str(cause).strip()
    return not str(exc).strip() or (bool(below) and below in str(exc))


def root_cause(exc: BaseException) -> BaseException:
    """The exception at the bottom of ``exc``'s chain of wrappers (Ray's, then ``raise ... from``
    whose text holds its cause's); a :class:`ConfigError` on the way stops the descent: it is the
    message written for the user, what it was raised from is detail."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        below = _ray_cause(exc)
        if below is None and not isinstance(exc, ConfigError) and exc.__cause__ is not None:
            below = exc.__cause__ if _wraps(exc, exc.__cause__) else None
        if below is None:
            break
        exc = below
    return exc


def _from_traceback_text(text: str) -> str:
    """The final ``Type: message`` of a traceback carried as text (a dead Ray actor's)."""
    lines = _ANSI.sub("", text).splitlines()
    frames = [i for i, line in enumerate(lines) if _FRAME.match(line)]
    if not frames:
        return "\n".join(lines).strip()
    rest = lines[frames[-1] + 1 :]
    while rest and (rest[0].startswith("    ") or not rest[0].strip()):  # the frame's code and carets
        rest = rest[1:]
    return "\n".join(rest).strip()


def _last_frame_is_own(text: str) -> bool:
    """Whether the last frame of a traceback carried as text lies in sftrl's own code."""
    files = _FILE.findall(_ANSI.sub("", text))
    return bool(files) and files[-1].startswith(OWN_CODE)


def _is_own(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by sftrl's own code (its message is written for a user)."""
    tb, last = exc.__traceback__, ""
    while tb is not None:
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return bool(last) and last.startswith(OWN_CODE)


def _plain(exc: BaseException) -> str:
    """The message of a (root) exception, for a user."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and not isinstance(exc, ConfigError):
        # a library's pydantic model (vLLM's configs): the messages, without pydantic's dump around them
        return "; ".join(
            ".".join(map(str, e["loc"])) + ": " * bool(e["loc"]) + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()[:3]
        )
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    if type(exc).__module__ == "builtins" and not isinstance(exc, (ValueError, RuntimeError, OSError)):
        return f"{type(exc).__name__}: {text}"  # KeyError('x'), an assertion: the type says what
    return text


def explain(exc: BaseException) -> tuple[str, bool, bool]:
    """What to show for ``exc``: (message, whether sftrl's own code wrote it, whether it is the
    user's mistake)."""
    root = root_cause(exc)
    ray_exceptions = sys.modules.get("ray.exceptions")  # never imported: no Ray error
    if ray_exceptions is not None and isinstance(root, ray_exceptions.RayError):
        # an actor that died in __init__: only its traceback's text came back
        carried = getattr(root, "error_msg", None) or str(root)
        last = _from_traceback_text(carried)
        match = _EXC_LINE.match(last)
        kind = match["type"] if match else ""
        message = match["message"] if match and kind.endswith(("Error", "Exception")) else last
        own = kind.startswith(OWN_MODULES) or (_last_frame_is_own(carried) and "." not in kind)
        user = kind.rsplit(".", 1)[-1] in USER_ERROR_NAMES
        return message or type(root).__name__, own, user
    carrier = next((e for e in _chain(exc) if _ray_cause(e) is not None), None)
    if carrier is not None and root.__traceback__ is None:
        # a Ray task's exception, unpickled without its traceback: the carrier's text holds it
        own = isinstance(root, ConfigError) or _last_frame_is_own(str(carrier))
    else:
        own = isinstance(root, ConfigError) or _is_own(root)
    # a KeyError or an assertion is a bug even in sftrl's code: its traceback is worth pointing at
    own = own and isinstance(root, WRITTEN_FOR_USERS)
    return _plain(root), own, isinstance(root, USER_ERRORS) or isinstance(exc, ConfigError)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps, outermost first."""
    out: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out.append(current)
        current = _ray_cause(current) or current.__cause__
    return out


def as_cli_error(exc: BaseException) -> CliError:
    """``exc`` (anything a subcommand raised) as the error the user sees."""
    message, own, user = explain(exc)
    lines = [line for line in message.splitlines() if line.strip()]
    if not own:  # a library's message: its first line, and where the rest is
        lines = lines[:1] + [DEBUG_HINT]
    return CliError("\n".join(lines), exit_code=USAGE if user else FAILURE)
