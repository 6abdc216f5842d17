"""Text in, text out: the generation entry points used by the CLI and the eval harness."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flax import nnx

from pythoncoder.infer.engine import Engine, GenerationResult
from pythoncoder.infer.loading import load_for_inference, with_config
from pythoncoder.infer.sampling import EOS_ID, SamplingConfig
from pythoncoder.infer.stops import TextStopper, truncate_at_stop

DEFAULT_BATCH = 8


@dataclass
class TextGenerator:
    """A loaded model + engine + tokenizer."""

    engine: Engine
    tokenizer: Any

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int,
                 sampling: SamplingConfig, stop: Sequence[str] = (), seed: int = 0,
                 speculative: bool = False,
                 on_tokens: Callable[[int, list[int]], None] | None = None,
                 ) -> tuple[list[str], GenerationResult]:
        """One completion per prompt (completion text only, cut at the first stop)."""
        ids = [self.encode(p) for p in prompts]
        for i, x in enumerate(ids):
            if not x:
                raise ValueError(f"prompt {i} encodes to no tokens")
        result = self.engine.generate(
            ids, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed, eos_id=EOS_ID,
            stop=TextStopper(self.decode, stop) if stop else None, speculative=speculative,
            on_tokens=on_tokens)
        texts = [truncate_at_stop(self.decode(t), stop) for t in result.tokens]
        return texts, result


def needs_yarn(cfg_original_len: int, prompt_tokens: int, max_new_tokens: int) -> bool:
    """YaRN (YARN-01) only when the context goes past the training length."""
    return prompt_tokens + max_new_tokens > cfg_original_len


@functools.lru_cache(maxsize=4)
def load_generator(run_dir: str | None, yarn: bool = False,
                   step: int | None = None, weights: str | None = None) -> TextGenerator:
    """Cached per (run_dir, yarn, step, weights): repeated calls reuse weights and compiles.

    ``weights`` is an export directory (``pythoncoder export``) used instead of a run.
    """
    if yarn:  # the same weights under the YaRN config: no second restore
        base = load_generator(run_dir, False, step, weights)
        model = nnx.merge(base.engine.graphdef, base.engine.params)
        return TextGenerator(Engine(with_config(model, model.cfg.with_yarn())), base.tokenizer)
    from pythoncoder.data.tokenizer import load_tokenizer

    if weights is not None:
        from pathlib import Path

        from pythoncoder.export import TOKENIZER_FILE, ExportError, load_weights

        if step is not None:
            raise ExportError("--step applies to a run (--run), not to exported weights")
        model, _ = load_weights(weights)
        tok_path = Path(weights) / TOKENIZER_FILE
        try:
            tokenizer = load_tokenizer(tok_path)
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception
            raise ExportError(f"{tok_path} is not a usable tokenizer: {e}") from None
        return TextGenerator(Engine(model), tokenizer)

    model, _ = load_for_inference(run_dir, step=step)
    return TextGenerator(Engine(model), load_tokenizer())


def complete(run_dir: str, prompts: list[str], *, n: int, temperature: float,
             max_new_tokens: int, stop: list[str], seed: int, top_p: float = 1.0,
             top_k: int = 0, batch_size: int = DEFAULT_BATCH,
             speculative: bool = False, progress: bool = False) -> list[list[str]]:
    """``n`` completions per prompt (completion text only, cut at the first stop sequence).

    Rows are batched ``batch_size`` at a time, grouped by prompt length so little padding
    is computed; greedy (``temperature == 0``) decodes each prompt once and repeats it.
    ``progress``: a progress bar (stderr) of the completions generated.
    """
    if n < 1:
        raise ValueError(f"n={n}: need at least one completion per prompt")
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    gen = load_generator(str(run_dir) if run_dir is not None else None)
    encoded = [gen.encode(p) for p in prompts]
    copies = 1 if sampling.greedy else n
    rows = sorted((len(encoded[i]), i, j) for i in range(len(prompts)) for j in range(copies))
    out: list[list[str]] = [[""] * copies for _ in prompts]
    stopper = TextStopper(gen.decode, stop) if stop else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), desc="generate", unit="completion")
    for b, start in enumerate(range(0, len(rows), batch_size)):
        chunk = rows[start:start + batch_size]
        result = gen.engine.generate(
            [encoded[i] for _, i, _ in chunk], max_new_tokens=max_new_tokens,
            sampling=sampling, seed=seed + 1_000_003 * b, eos_id=EOS_ID, stop=stopper,
            speculative=speculative)
        for (_, i, j), toks in zip(chunk, result.tokens):
            out[i][j] = truncate_at_stop(gen.decode(toks), stop)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return [o * n if copies == 1 else o for o in out]
