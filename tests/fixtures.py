"""Small on-disk fixtures shared by tests (import as `from fixtures import ...`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dreamr_jax.data.tokenizer_train import train_tokenizer

_CORPUS = (
    "You are a helpful assistant.\n",
    "Describe the picture. What colour is the square? Count the circles in both images.\n\n",
    "system user assistant The answer is 42. Step 1: look. Step 2: reason.",
)


def make_tiny_tokenizer(path: str | os.PathLike, vocab_size: int = 400) -> Path:
    """Writes a tiny byte-level BPE `Qwen2TokenizerFast` with Qwen special tokens to `path`.

    Loadable with `transformers.AutoTokenizer.from_pretrained(path)`; any text round-trips
    (byte-level), the special tokens are single ids, and the chat template emits
    `<|vision_start|><|image_pad|><|vision_end|>` for image items. Deterministic.

    Args:
        path: Directory to create (parents too).
        vocab_size: BPE vocabulary size, special tokens and the 256 byte symbols included.

    Returns:
        `path` as a `Path`.
    """
    hf_tokenizer = train_tokenizer(_CORPUS, vocab_size=vocab_size)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf_tokenizer.save_pretrained(path)
    return path


ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str, timeout: float = 600) -> tuple[dict, str]:
    """Runs ``bench/<script>`` on one CPU device (as by hand) and returns the JSON object of
    its last line and its whole stdout; fails the test on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout
