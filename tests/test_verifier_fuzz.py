"""Fuzz: 100,000+ random and adversarial strings into every verifier.

Each call must return a well-formed Verdict (no exception), and an audit hook proves that no
code is compiled or executed, nothing is unpickled and no process is started while verifying.
"""

from __future__ import annotations

import math
import random
import sys

import gymnasium as gym
import pytest

import services.envs  # noqa: F401
from services.verifier import Verdict, verify

N_STRINGS = 100_000
FORBIDDEN_EVENTS = {
    "exec", "compile", "pickle.find_class", "marshal.loads", "os.system", "subprocess.Popen",
    "os.exec", "os.posix_spawn", "os.spawn", "ctypes.dlopen", "socket.connect", "open",
}  # fmt: skip

_guard = {"on": False, "seen": []}


def _audit(event: str, args: tuple) -> None:
    if _guard["on"] and event in FORBIDDEN_EVENTS:
        _guard["seen"].append((event, repr(args)[:200]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; the flag keeps it quiet outside the fuzz

ADVERSARIAL = [
    "", " ", "{", "}", "{}", "[]", "null", "true", '""', "{" * 100_000, "[" * 100_000 + "]" * 100_000,
    '{"formula": ' + "[" * 5000 + "]" * 5000 + "}", '{"formula": NaN}', '{"formula": Infinity}',
    '{"formula": 1e999999}', '{"formula": "' + "9" * 100_000 + '"}', '{"formula": "' + "(" * 10_000 + '"}',
    '{"formula": "__import__(\'os\').system(\'touch /tmp/pwned\')"}', "eval('1+1')", "exec('x=1')",
    '{"formula": "().__class__.__bases__[0].__subclasses__()"}', "\x00" * 1000, "\x80\xff\xfe" * 100,
    "\ud800", "💥" * 10_000, "A" * 5_000_000, '{"action": "forward()' + ")" * 10000 + '"}',
    '{"action": "turn_direction(' + "north" * 10000 + ')"}', '{"current observation": null, "action": 5}',
    "\\boxed{" * 20_000, "\\boxed{" + "}" * 20_000, "\\frac{1}{0}", "\\frac{" * 10_000, "1/0", "0/0",
    "The answer is " + "9" * 50_000, "Answer: (" + "Z" * 1000 + ")", "1e309", "-1e-400", "%" * 1000,
    '{"cards": ' + '["A"' + ",\"A\"" * 100_000 + "]}", '{"formula": "1' + "+1" * 5000 + '=24"}',
    '{"formula": {"__reduce__": "os.system"}}', "cos\nsystem\n(S'ls'\ntR.",  # a pickle payload as text
]  # fmt: skip

ALPHABET = list('{}[]():,."\'=+-*/\\ 0123456789abcdefxyzABCJQK_\n\t') + [
    '"formula"', '"cards"', '"action"', '"current observation"', '"current instruction"', "forward()",
    "stop()", "turn_direction(", "north", "slightly left", "\\boxed{", "\\frac{", "}{", "intersection",
    "not ", "(A)", "answer is ", "%", "é", "∞", "\x00",
]  # fmt: skip


def _tasks() -> list[tuple[str, object, str]]:
    """One or two tasks per verifier, each with a valid answer to mutate."""
    out = []
    for env_id, options in [
        ("sftrl/GeneralPoints-v0", {"mode": "text"}),
        ("sftrl/GeneralPoints-v0", {"mode": "image", "image_size": 32}),
        ("sftrl/VIRL-v0", {"mode": "text", "actions": "absolute"}),
        ("sftrl/VIRL-v0", {"mode": "text", "actions": "relative"}),
        ("sftrl/VisualQA-v0", {"mode": "text", "answer_format": "numeric"}),
        ("sftrl/VisualQA-v0", {"mode": "text", "answer_format": "multiple_choice"}),
    ]:
        env = gym.make(env_id, **options)
        env.reset(seed=11)
        out.append((env_id, env.unwrapped.current_task(), env.unwrapped.expert_answer()))
    return out


def _mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        pos = rng.randint(0, len(chars))
        if op < 0.4:
            chars.insert(pos, rng.choice(ALPHABET))
        elif op < 0.7 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(ALPHABET)
    return "".join(chars)


def _strings(rng: random.Random, valid: list[str]) -> list[str]:
    out = list(ADVERSARIAL)
    while len(out) < N_STRINGS:
        r = rng.random()
        if r < 0.35:
            out.append(_mutate(rng, rng.choice(valid)))
        elif r < 0.7:
            out.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))))
        elif r < 0.85:
            out.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))).decode("latin-1"))
        else:
            out.append("".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 24))))
    return out


def _check(verdict: object) -> None:
    assert isinstance(verdict, Verdict)
    assert isinstance(verdict.reward, float) and math.isfinite(verdict.reward)
    assert isinstance(verdict.feedback, str) and len(verdict.feedback) < 4000
    assert all(isinstance(e, str) for e in verdict.errors)


@pytest.mark.timeout(1800)
def test_every_verifier_survives_100k_hostile_strings():
    tasks = _tasks()
    valid = [answer for _, _, answer in tasks]
    for _, task, answer in tasks:  # warm-up: imports and caches happen before the guard is on
        _check(verify(task, answer))
        for text in ADVERSARIAL:
            _check(verify(task, text))
    strings = _strings(random.Random(1234), valid)
    assert len(strings) >= N_STRINGS
    by_family: dict[str, list] = {}
    for env_id, task, _ in tasks:
        by_family.setdefault(env_id, []).append(task)
    calls = 0
    _guard["on"], _guard["seen"] = True, []
    try:
        for _family, family_tasks in by_family.items():
            for i, text in enumerate(strings):  # every string reaches every verifier
                _check(verify(family_tasks[i % len(family_tasks)], text))
                calls += 1
    finally:
        _guard["on"] = False
    assert calls >= 3 * N_STRINGS
    assert _guard["seen"] == [], f"verifiers did forbidden things: {_guard['seen'][:5]}"
