"""transformers engine: batched decoding with a local transformers model, on CPU or GPU.

Why it is fast on a CPU: prompts are sorted by token length, longest first, and decoded by
synth/engines/decode.py with up to `batch_size` sequences per forward pass: a prompt is prefilled
once for its `n` samples, finished sequences leave the batch, and new prompts take their rows
(measured in bench/generate.py against batched `model.generate`). A model that loop does not cover
(a generation config with a logits processor, a sliding-window or state-space cache) is decoded with
`model.generate` in length-sorted, left-padded batches instead; `decoder_problem` says why.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import torch

from synth.engines.base import Engine, ProgressFn, SamplingParams
from synth.engines.decode import Decoded, Unsupported, decode, supports
from synth.errors import UserError
from synth.models import loading_model
from synth.records import Completion, Messages, TokenLogprob
from synth.runtime import check_device, dtype_name, pick_dtype


class TransformersEngine(Engine):
    """Generation with a local transformers model."""

    name = "transformers"

    def __init__(
        self,
        load_path: str,
        model_id: str,
        revision: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 32,
        field: str = "teacher.path",
    ) -> None:
        super().__init__(model_id, revision)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = check_device(device)
        with loading_model(field, model_id):
            self.tokenizer = AutoTokenizer.from_pretrained(load_path, revision=revision)
            self.model = AutoModelForCausalLM.from_pretrained(
                load_path, revision=revision, dtype=pick_dtype(dtype, self.device)
            ).to(self.device)
        self._attach(batch_size)

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, model_id: str, batch_size: int = 32) -> TransformersEngine:
        """An engine around a model already in memory (e.g. a trained student with its adapter merged)."""
        engine = cls.__new__(cls)
        Engine.__init__(engine, model_id)
        engine.device = str(next(model.parameters()).device)
        engine.model, engine.tokenizer = model, tokenizer
        engine._attach(batch_size)
        return engine

    def _attach(self, batch_size: int) -> None:
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        # why `model.generate` decodes instead of synth/engines/decode.py (None: the faster loop is used)
        self.decoder_problem: str | None = supports(self.model)

    def provenance(self, params: SamplingParams) -> dict[str, Any]:
        """Also the dtype the weights ran in: 'auto' is bfloat16 on some CPUs and float32 on others,
        and the two give slightly different samples and log-probs."""
        return {**super().provenance(params), "dtype": dtype_name(self.model.dtype)}

    @property
    def vocab_size(self) -> int | None:
        return len(self.tokenizer)

    def encode(self, messages: Messages) -> list[int]:
        """Token ids of a chat prompt with the generation prompt appended."""
        return list(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        )

    def check_prompt(self, messages: Messages, params: SamplingParams) -> str | None:
        if not self.context:
            return None
        n = len(self.encode(messages))
        if n + params.max_new_tokens > self.context:
            return f"prompt too long: {n} tokens + max_new_tokens {params.max_new_tokens} > context {self.context}"
        return None

    def generate(
        self, prompts: list[Messages], params: SamplingParams, on_progress: ProgressFn | None = None
    ) -> list[list[Completion]]:
        encoded = [self.encode(m) for m in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        if self.decoder_problem is None:
            try:
                return self._decode(encoded, order, params, on_progress)
            except Unsupported as exc:
                self.decoder_problem = str(exc)
        per_batch = max(1, self.batch_size // params.n)
        results: list[list[Completion]] = [[] for _ in prompts]
        for start in range(0, len(order), per_batch):
            idx = order[start : start + per_batch]
            batch = self._generate_batch([encoded[i] for i in idx], params)
            for i, comps in zip(idx, batch, strict=True):
                results[i] = comps
            if on_progress:
                done = [c for comps in batch for c in comps]
                on_progress(len(done), sum(c.completion_tokens or 0 for c in done))
        return results

    def _decode(
        self, encoded: list[list[int]], order: list[int], params: SamplingParams, on_progress: ProgressFn | None
    ) -> list[list[Completion]]:
        """All prompts through synth/engines/decode.py, longest first, `batch_size` sequences at a time."""
        # a seed per prompt: the same prompt with the same seed samples the same text, whatever else is decoded
        digests = [hashlib.sha256(repr((params.seed, encoded[i])).encode()).digest() for i in order]
        greedy = params.temperature <= 0
        copies = params.n if greedy else 1  # a greedy answer is generated once and copied n times

        def done(_: int, seq: Decoded) -> None:
            if on_progress:
                on_progress(copies, copies * (len(seq.tokens) - seq.stopped))

        try:
            with torch.inference_mode():
                out = decode(
                    self.model,
                    [encoded[i] for i in order],
                    n=params.n,
                    max_new_tokens=params.max_new_tokens,
                    eos_ids=self.eos_ids,
                    pad_id=self.tokenizer.pad_token_id,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k,
                    logprobs=params.logprobs,
                    seeds=[int.from_bytes(d[:8], "little") % (2**63) for d in digests],
                    max_rows=self.batch_size,
                    on_done=done,
                )
        except torch.OutOfMemoryError as exc:
            raise UserError(
                f"out of memory generating {self.batch_size} sequences at a time",
                "lower generate.batch_size or generate.max_new_tokens",
            ) from exc
        results: list[list[Completion]] = [[] for _ in encoded]
        for i, seqs in zip(order, out, strict=True):
            comps = [self._completion(seq, len(encoded[i])) for seq in seqs]
            results[i] = [replace(comps[0]) for _ in range(params.n)] if greedy and params.n > 1 else comps
        return results

    def _completion(self, seq: Decoded, prompt_tokens: int) -> Completion:
        kept = seq.tokens[:-1] if seq.stopped else seq.tokens
        return Completion(
            text=self.tokenizer.decode(kept, skip_special_tokens=True),
            finish_reason="stop" if seq.stopped else "length",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(kept),
            # the stop token's step too: a student trained on these learns when to stop
            logprobs=None
            if seq.logprobs is None
            else [
                TokenLogprob(
                    token=self.tokenizer.decode([tok]),
                    token_id=tok,
                    logprob=lp,
                    top_tokens=None,
                    top_ids=ids,
                    top_logprobs=lps,
                )
                for tok, (lp, ids, lps) in zip(seq.tokens, seq.logprobs, strict=True)
            ],
        )

    def _generate_batch(self, encoded: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        pad = self.tokenizer.pad_token_id
        width = max(len(e) for e in encoded)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=self.device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=self.device)
        # A seed per batch content: the same prompts with the same seed sample the same text.
        digest = hashlib.sha256(repr((params.seed, encoded)).encode()).digest()
        torch.manual_seed(int.from_bytes(digest[:8], "little") % (2**63))
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k or 0}
            if params.temperature > 0
            else {"do_sample": False}
        )
        # Greedy decoding gives one answer: generate it once and copy it n times.
        reps = params.n if params.temperature > 0 else 1
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=params.max_new_tokens,
                    num_return_sequences=reps,
                    pad_token_id=pad,
                    return_dict_in_generate=True,
                    output_logits=bool(params.logprobs),
                    **sampling,
                )
        except torch.OutOfMemoryError as exc:
            raise UserError(
                f"out of memory generating a batch of {len(encoded) * params.n} sequences",
                "lower generate.batch_size or generate.max_new_tokens",
            ) from exc
        new = out.sequences[:, width:].tolist()
        logits = out.logits if params.logprobs else None
        comps: list[list[Completion]] = [[] for _ in encoded]
        for row, tokens in enumerate(new):
            stop = next((j for j, t in enumerate(tokens) if t in self.eos_ids), None)
            kept = tokens if stop is None else tokens[:stop]
            comps[row // reps].append(
                Completion(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True),
                    finish_reason="length" if stop is None else "stop",
                    prompt_tokens=len(encoded[row // reps]),
                    completion_tokens=len(kept),
                    # the stop token's step too: a student trained on these learns when to stop
                    logprobs=None
                    if logits is None
                    else self._logprobs(logits, row, tokens[: len(kept) + (stop is not None)], params.logprobs or 0),
                )
            )
        if reps == 1 and params.n > 1:
            comps = [[replace(c[0]) for _ in range(params.n)] for c in comps]
        return comps

    def _logprobs(self, logits: tuple[torch.Tensor, ...], row: int, tokens: list[int], k: int) -> list[TokenLogprob]:
        """The model's own (raw: temperature 1, before top-k/top-p) log-probabilities of each generated
        token and its top-k, by token id (the strings are left out: the ids are exact and smaller)."""
        out = []
        for step, tok in enumerate(tokens):
            lp = torch.log_softmax(logits[step][row].float(), dim=-1)
            top = torch.topk(lp, k)
            out.append(
                TokenLogprob(
                    token=self.tokenizer.decode([tok]),
                    token_id=tok,
                    logprob=float(lp[tok]),
                    top_tokens=None,
                    top_ids=top.indices.tolist(),
                    top_logprobs=[float(v) for v in top.values],
                )
            )
        return out

    def close(self) -> None:
        del self.model
