"""Model merges (mergekit underneath): known results on small tensors, bad input, outputs that load.

The known-tensor tests build two- or three-model sets of a small Llama whose tensors are all equal
except one, set by hand, so the merged value of that tensor can be worked out on paper.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sftrl.config import ConfigError
from sftrl.models.merge import MERGE_RECORD, MergeError, MergeSpec, merge_models, parse_spec

NORM = "model.norm.weight"  # 1-D, hidden_size = 8
Q = "model.layers.0.self_attn.q_proj.weight"  # 8 x 8


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("small-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    from tokenizers import Tokenizer, models

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    )
    tok.save_pretrained(folder)
    return folder


def variant(base: Path, root: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    folder = root / name
    shutil.copytree(base, folder)
    state = load_file(folder / "model.safetensors")
    for key, value in tensors.items():
        assert state[key].shape == value.shape
        state[key] = value.to(state[key].dtype)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def merged(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_linear_is_the_weighted_mean(small_llama: Path, tmp_path: Path) -> None:
    a = variant(small_llama, tmp_path, "a", {NORM: torch.full((8,), 1.0)})
    b = variant(small_llama, tmp_path, "b", {NORM: torch.full((8,), 3.0)})
    out = merge_models(
        MergeSpec(method="linear", models=[str(a), str(b)], weights=[0.25, 0.75]), tmp_path / "m"
    )
    torch.testing.assert_close(merged(out)[NORM], torch.full((8,), 2.5))
    # weights are normalised by default: 1 and 3 give the same mean as 0.25 and 0.75
    out = merge_models(MergeSpec(method="linear", models=[str(a), str(b)], weights=[1, 3]), tmp_path / "m2")
    torch.testing.assert_close(merged(out)[NORM], torch.full((8,), 2.5))
    spec = MergeSpec(method="linear", models=[str(a), str(b)], weights=[1, 1], normalize=False)
    torch.testing.assert_close(merged(merge_models(spec, tmp_path / "m3"))[NORM], torch.full((8,), 4.0))
    # overwritten: the old merge is moved aside and deleted only once the new one is in place
    torch.testing.assert_close(merged(merge_models(spec, out, overwrite=True))[NORM], torch.full((8,), 4.0))
    assert not list(tmp_path.glob(".m2.old-*"))
    # untouched tensors are equal in both inputs and stay so
    torch.testing.assert_close(merged(tmp_path / "m")[Q], load_file(a / "model.safetensors")[Q])


def test_slerp_follows_the_great_circle(small_llama: Path, tmp_path: Path) -> None:
    eye = torch.eye(8)
    a = variant(small_llama, tmp_path, "a", {Q: eye, NORM: torch.full((8,), 1.0)})
    b = variant(
        small_llama, tmp_path, "b", {Q: eye.roll(1, dims=0), NORM: torch.full((8,), 2.0)}
    )  # rows orthogonal
    for t in (0.0, 1 / 3, 0.5, 1.0):
        out = merge_models(MergeSpec(method="slerp", models=[str(a), str(b)], t=t), tmp_path / f"s{t:.2f}")
        q = merged(out)[Q]
        # orthogonal unit rows: slerp = cos(t pi/2) a + sin(t pi/2) b (t = 1/3: 0.866 a + 0.5 b)
        expected = math.cos(t * math.pi / 2) * eye + math.sin(t * math.pi / 2) * eye.roll(1, dims=0)
        torch.testing.assert_close(q, expected, atol=1e-6, rtol=1e-5)
        # rows of a 1-D tensor are scalars, parallel: linear interpolation
        torch.testing.assert_close(merged(out)[NORM], torch.full((8,), 1.0 + t))


def test_ties_trims_elects_signs_and_averages(small_llama: Path, tmp_path: Path) -> None:
    base = variant(small_llama, tmp_path, "base", {NORM: torch.ones(8)})
    da = torch.tensor([4.0, -1.0, 0.1, 2.0, 0.0, -3.0, 0.2, 0.9])
    db = torch.tensor([-2.0, -2.0, 0.3, 3.0, 1.0, 1.0, -0.1, -4.0])
    a = variant(small_llama, tmp_path, "a", {NORM: 1 + da})
    b = variant(small_llama, tmp_path, "b", {NORM: 1 + db})
    spec = MergeSpec(method="ties", models=[str(a), str(b)], base=str(base), density=0.5, weights=[1, 1])
    out = merge_models(spec, tmp_path / "t")
    # density 0.5 keeps 4 of 8 by magnitude: a -> [4,-1,0,2,0,-3,0,0], b -> [-2,-2,0,3,0,0,0,-4];
    # elected signs (sum): + - . + . - . -; agreeing entries averaged by their weights:
    expected_delta = torch.tensor([4.0, -1.5, 0.0, 2.5, 0.0, -3.0, 0.0, -4.0])
    torch.testing.assert_close(merged(out)[NORM], 1 + expected_delta)
    record = json.loads((out / MERGE_RECORD).read_text())
    assert record["spec"]["method"] == "ties" and record["mergekit"]["base_model"] == str(base)


@pytest.mark.parametrize("method", ["linear", "slerp", "ties"])
def test_a_sweeps_ratio_0_and_1_are_its_two_models(method: str, small_llama: Path, tmp_path: Path) -> None:
    from deploy.studies.merge_sweep import MergeSweepConfig

    torch.manual_seed(1)
    start = merged(small_llama)
    base = variant(small_llama, tmp_path, "base", {})
    a = variant(small_llama, tmp_path, "a", {k: v + 0.1 * torch.randn_like(v) for k, v in start.items()})
    b = variant(small_llama, tmp_path, "b", {k: v + 0.1 * torch.randn_like(v) for k, v in start.items()})
    # bitwise: a study takes the end points' own evaluations for these rows (deploy.studies.runner);
    # ties keeps every entry of both task vectors at density 1 (at 0.5 an end point is its trimmed self)
    ties = {"base": str(base), "density": 1.0} if method == "ties" else {}
    sweep = MergeSweepConfig(method=method, models=[str(a), str(b)], **ties)
    for ratio, model in ((0.0, a), (1.0, b)):
        out = merged(merge_models(sweep.merge_spec(ratio), tmp_path / f"{method}-{ratio}"))
        want = merged(model)
        assert out.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(out[key], want[key], atol=0, rtol=0, msg=f"{method} {ratio} {key}")
    with pytest.raises(ValueError, match="ties needs base"):
        MergeSweepConfig(method="ties", models=[str(a), str(b)])


def test_merged_folder_loads_in_transformers(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    twin = shutil.copytree(tiny_model, tmp_path / "twin")  # mergekit refuses the same folder twice
    out = merge_models(MergeSpec(method="slerp", models=[str(tiny_model), str(twin)], t=0.5), tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template, "the chat template must come along"
    reference = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = tok("24 points", return_tensors="pt").input_ids
    with torch.no_grad():  # merging a model with itself gives the model back
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "slerp", "models": ["a", "b"]}, "slerp needs t"),
        ({"method": "slerp", "models": ["a", "b", "c"], "t": 0.5}, "exactly two"),
        ({"method": "slerp", "models": ["a", "b"], "t": 1.5}, "less than or equal to 1"),
        ({"method": "linear", "models": ["a", "b"], "weights": [1]}, "one weight per model"),
        ({"method": "linear", "models": ["a"]}, "at least two"),
        ({"method": "linear", "models": ["a", "b"], "weights": [1, -1]}, "sum to 0"),
        ({"method": "ties", "models": ["a", "b"]}, "needs a base"),
        ({"method": "ties", "models": ["a"], "base": "b", "density": 0}, "greater than 0"),
        ({"method": "average", "models": ["a", "b"]}, "method"),
    ],
)
def test_bad_specs_say_what_is_wrong(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(**fields)


def test_models_that_do_not_fit_are_refused(small_llama: Path, tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="different shapes"):
        merge_models(MergeSpec(method="linear", models=[str(small_llama), str(tiny_model)]), tmp_path / "x")
    with pytest.raises(MergeError, match="not a local model folder|does not exist"):
        merge_models(MergeSpec(method="linear", models=[str(small_llama), "no/such/folder"]), tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_corrupt_checkpoint_is_refused_and_nothing_is_written(small_llama: Path, tmp_path: Path) -> None:
    from sftrl.checkpoint import COMPLETE_NAME

    ckpt = variant(small_llama, tmp_path, "step-000010", {})
    (ckpt / COMPLETE_NAME).write_text(json.dumps({"sha256": {"model.safetensors": "0" * 64}}))
    with pytest.raises(MergeError, match="incomplete/corrupt"):
        merge_models(MergeSpec(method="linear", models=[str(small_llama), str(ckpt)]), tmp_path / "out")
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(MergeError, match="exists"):
        merge_models(MergeSpec(method="linear", models=[str(small_llama), str(small_llama)]), existing)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*tmp-*"))


def test_cli_merge(small_llama: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deploy.cli import main

    a = variant(small_llama, tmp_path, "a", {NORM: torch.zeros(8)})
    b = variant(small_llama, tmp_path, "b", {NORM: torch.full((8,), 10.0)})
    runner = CliRunner()
    ok = runner.invoke(main, ["merge", "--method", "linear", "--models", str(a), str(b),
                              "--weights", "0.3", "0.7", "--out", str(tmp_path / "m")])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    torch.testing.assert_close(merged(tmp_path / "m")[NORM], torch.full((8,), 7.0))
    bad = runner.invoke(
        main, ["merge", "--method", "slerp", "--models", str(a), "--out", str(tmp_path / "n")]
    )
    assert bad.exit_code == 2 and "exactly two" in bad.output
    bad = runner.invoke(main, ["merge", "--method", "linear", "--models", str(a), str(b)])
    assert bad.exit_code == 2 and "--out" in bad.output


def test_the_same_model_twice_is_refused(small_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="named twice"):
        merge_models(MergeSpec(method="linear", models=[str(small_llama), str(small_llama)]), tmp_path / "x")


@pytest.mark.slow
def test_merge_sweep_evaluates_every_ratio_in_vllm(tiny_model: Path, tmp_path: Path) -> None:
    """Real merges loaded into a real vLLM engine (in place after the first); ratio 0 is model A."""
    from click.testing import CliRunner

    from deploy.cli import main
    from deploy.evaluate.suites import evaluate
    from services.rollout.config import EngineConfig, RolloutConfig, SamplingConfig
    from services.rollout.worker import RolloutWorker

    state = load_file(tiny_model / "model.safetensors")
    gen = torch.Generator().manual_seed(1)
    noisy = {k: v + 0.05 * torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in state.items()}
    b = variant(tiny_model, tmp_path, "b", noisy)
    out = tmp_path / "sweep"
    args = ["merge-sweep", "--method", "linear", "--models", str(tiny_model), str(b), "--ratios", "1", "0", "0.5",
            "--out", str(out), "episodes=6", "sampling.max_tokens=24", "engine.max_model_len=1024",
            "suites.id={}", "suites.ood_rule.face_cards=as_11_12_13"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["ratio"] for r in sweep["rows"]] == [0.0, 0.5, 1.0]
    assert all({"success/id", "success/ood_rule", "reward/id"} <= set(r) for r in sweep["rows"])
    assert (out / "sweep.png").stat().st_size > 0 and (out / "resolved_config.yaml").exists()
    assert not list(out.glob("merge-*")), "merged folders are removed unless keep_models"
    # the same suites played by a fresh engine on model A give ratio 0's numbers
    worker = RolloutWorker(RolloutConfig(engine=EngineConfig(model=str(tiny_model), max_model_len=1024)))
    try:
        config = sweep["config"]
        metrics, _ = evaluate(worker, config["env"]["id"], config["env"]["options"], config["suites"], 6,
                              config["seed"], SamplingConfig.model_validate(config["sampling"]))  # fmt: skip
    finally:
        worker.shutdown()
    assert metrics == {k: v for k, v in sweep["rows"][0].items() if k not in ("ratio", "outcomes")}
    for row in sweep["rows"]:  # and each ratio's episodes, for differences paired by task
        for suite in ("id", "ood_rule"):
            found = row["outcomes"]["suites"][suite]
            assert len(found["task"]) == 6 and sum(found["success"]) / 6 == row[f"success/{suite}"]
