"""The transformers engine's own decoding loop: only unfinished rows are computed.

Why not `model.generate`: it keeps computing every row of a batch until the longest one ends (a batch
of 32 answers where most stop at 50 tokens and one runs to 96 pays 96 steps for all 32), it prefills a
prompt once per sample (`num_return_sequences` repeats the prompt before the forward pass), it sorts
the whole 49k-token vocabulary at every step for top-p, and with `output_logits` it keeps every step's
full logits for the whole batch in memory. Here finished rows leave the batch and its KV cache
(`DynamicCache.batch_select_indices`), a prompt is prefilled once and its cache repeated for its
samples, top-p is computed exactly on the top candidates (the whole vocabulary only when they do not
hold `top_p` of the mass), and the stored top-k log-probabilities are taken at each step.

What it does not do, and then `supports` says no and the engine uses `model.generate`: a model whose
generation config asks for a logits processor (repetition penalty, min length, suppressed tokens,
...), or whose cache is not one plain `DynamicCache` of full-attention layers (sliding windows,
state-space layers, encoder-decoders).

Sampling follows transformers' warpers in their order, temperature, then top-k, then top-p (a token is
kept when the probability mass of the tokens ranked above it is below `top_p`), with a `torch.Generator`
seeded by the caller, so a batch gives the same text for the same seed. The samples are not the ones
`model.generate` would draw (another random stream); their distribution is the same.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

CANDIDATES = 256
"""Top-p is computed on this many top tokens; a row whose nucleus is wider falls back to a full sort."""

_PROCESSOR_FIELDS = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "force_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "min_length": 0,
    "min_new_tokens": None,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "exponential_decay_length_penalty": None,
    "renormalize_logits": False,
    "guidance_scale": None,
    "watermarking_config": None,
}


@dataclass
class Decoded:
    """One sequence's new tokens (with its stop token, if it stopped) and, when asked, per step the raw
    log-probability of the chosen token and the top-k (ids, log-probs)."""

    tokens: list[int]
    stopped: bool
    logprobs: list[tuple[float, list[int], list[float]]] | None = None


def supports(model: Any) -> str | None:
    """Why this loop cannot stand in for `model.generate` on `model` (None: it can)."""
    if getattr(model.config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    config = getattr(model, "generation_config", None)
    for name, neutral in _PROCESSOR_FIELDS.items():
        value = getattr(config, name, neutral)
        if value is not None and value != neutral:
            return f"its generation config sets {name}={value!r}"
    layer_types = getattr(model.config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return "it has layers other than full attention"
    if getattr(model.config, "sliding_window", None) and getattr(model.config, "use_sliding_window", True):
        return "it uses sliding-window attention"
    return None


def choose(
    logits: torch.Tensor, temperature: float, top_p: float, top_k: int | None, generators: list[torch.Generator]
) -> torch.Tensor:
    """The next token of each row: argmax at temperature 0, else a sample from `kept`, drawn with the
    row's own generator (so a sequence's text does not depend on which others share its batch)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    nxt = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    for rows, probs, ids in kept(logits, temperature, top_p, top_k):
        picks = [torch.multinomial(p, 1, generator=generators[r]) for p, r in zip(probs, rows.tolist(), strict=True)]
        nxt[rows] = ids.gather(-1, torch.stack(picks)).squeeze(-1)
    return nxt


def kept(
    logits: torch.Tensor, temperature: float, top_p: float, top_k: int | None
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The distribution sampled from, as groups of (rows, probabilities, token ids): the tokens that
    survive temperature, top-k and top-p, with their (unnormalised) probabilities, zero for the rest.

    Computed on the top CANDIDATES tokens; rows whose nucleus reaches past them (a flat distribution)
    are sorted whole, in a second group. Without top-k or top-p, the whole vocabulary.
    """
    scores = logits.float() / temperature
    everything = torch.arange(scores.shape[0], device=scores.device)
    vocab = scores.shape[-1]
    if not top_k and top_p >= 1.0:
        return [(everything, scores.softmax(-1), torch.arange(vocab, device=scores.device).expand(len(everything), -1))]
    values, ids = scores.topk(min(top_k or CANDIDATES, vocab), dim=-1)  # sorted, highest first
    # top-k renormalises among its k tokens before top-p; without it, top-p sees the whole vocabulary
    norm = (values if top_k else scores).logsumexp(-1, keepdim=True)
    probs = (values - norm).exp()
    groups = [(everything, probs, ids)]
    if not top_k:
        wide = probs.sum(-1) < top_p  # the nucleus reaches past the candidates: only then sort everything
        if bool(wide.any()):
            full_values, full_ids = scores[wide].sort(dim=-1, descending=True)
            narrow = ~wide
            groups = [(everything[narrow], probs[narrow], ids[narrow])] if bool(narrow.any()) else []
            groups.append((everything[wide], (full_values - norm[wide]).exp(), full_ids))
    return [(rows, _nucleus(p, top_p), i) for rows, p, i in groups]


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the sorted candidates whose preceding mass reaches top_p (the first is always kept), as
    transformers' TopPLogitsWarper does."""
    if top_p >= 1.0:
        return probs
    before = probs.cumsum(-1) - probs
    out = torch.where(before < top_p, probs, torch.zeros_like(probs))
    out[:, 0] = probs[:, 0]
    return out


class Unsupported(Exception):
    """The model's cache is not what this loop manages; the engine falls back to `model.generate`."""


def decode(
    model: Any,
    prompts: list[list[int]],
    *,
    n: int,
    max_new_tokens: int,
    eos_ids: set[int],
    pad_id: int,
    temperature: float,
    top_p: float = 1.0,
    top_k: int | None = None,
    logprobs: int | None = None,
    seeds: list[int] | None = None,
    max_rows: int = 64,
    on_done: Callable[[int, Decoded], None] | None = None,
) -> list[list[Decoded]]:
    """`n` sequences per prompt (one when greedy: the caller copies it), each until a stop token or
    `max_new_tokens`, with at most `max_rows` sequences in a forward pass. Prompts enter in the order
    given as rows free up (continuous batching: a prompt is prefilled when a quarter of the rows
    are free, or all of them it needs when fewer are left), so the batch stays full until the last
    prompts. Returns result[i][j] = sample j of prompt i; `on_done(prompt index, sequence)` is called
    as each sequence ends. Sample j of prompt i draws from its own generator, seeded by (seeds[i], j)
    (default: the prompt's index), so the same prompt and seed sample the same text in any batch."""
    reps = n if temperature > 0 else 1
    max_rows = max(max_rows, reps)
    results: list[list[Decoded | None]] = [[None] * reps for _ in prompts]
    queue = list(range(len(prompts)))
    seeds = seeds if seeds is not None else list(range(len(prompts)))
    batch = _Batch(model, pad_id)
    eos = torch.tensor(sorted(i for i in eos_ids if i is not None), dtype=torch.long, device=batch.device)
    admit_at = max(reps, max_rows // 4)
    while queue or batch.rows:
        free = max_rows - batch.rows
        if queue and (free >= admit_at or (free >= reps and free >= reps * len(queue))):
            take, queue = queue[: max(1, free // reps)], queue[max(1, free // reps) :]
            keys = [(i, j) for i in take for j in range(reps)]
            batch.admit([prompts[i] for i in take], keys, [_generator(seeds[i], j, batch.device) for i, j in keys])
        nxt = choose(batch.logits, temperature, top_p, top_k, batch.generators)
        if logprobs:
            raw = torch.log_softmax(batch.logits.float(), dim=-1)
            top = raw.topk(logprobs, dim=-1)
            chosen = raw.gather(-1, nxt[:, None]).squeeze(-1).tolist()
            top_ids, top_lps = top.indices.tolist(), top.values.tolist()
        stop = torch.isin(nxt, eos).tolist()
        done = []
        for j, (seq, tok) in enumerate(zip(batch.seqs, nxt.tolist(), strict=True)):
            seq.tokens.append(tok)
            if logprobs and seq.logprobs is not None:
                seq.logprobs.append((chosen[j], top_ids[j], top_lps[j]))
            seq.stopped = stop[j]
            if stop[j] or len(seq.tokens) >= max_new_tokens:
                done.append(j)
                i, k = batch.keys[j]
                results[i][k] = seq
                if on_done:
                    on_done(i, seq)
        batch.step(nxt, done)
    out = [[d for d in ds if d is not None] for ds in results]
    if not logprobs:
        for ds in out:
            for d in ds:
                d.logprobs = None
    return out


class _Batch:
    """The rows being decoded: their KV cache, attention mask, next-token logits and sequences so far."""

    def __init__(self, model: Any, pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)
        self.logits = torch.zeros(0, 0, device=self.device)
        self.seqs: list[Decoded] = []
        self.keys: list[tuple[int, int]] = []  # (prompt index, sample index) of each row
        self.generators: list[torch.Generator] = []  # each row's own random stream
        # transformers 5 renames `past_key_values` to `cache` (the old name warns until 5.40)
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @property
    def rows(self) -> int:
        return len(self.seqs)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        kwargs = {self.cache_arg: cache}
        # The last position only. For a prefill (several positions) as an index tensor, not the int 1:
        # transformers slices the hidden states with it, and an int gives a strided view, on which a
        # bf16 CPU linear with a frozen weight (a LoRA's base, an eval model) allocated ~1.6 GB at
        # 32 x 60 tokens; an index tensor gathers a contiguous copy first.
        keep: int | torch.Tensor = 1 if ids.shape[1] == 1 else torch.tensor([ids.shape[1] - 1], device=ids.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep, **kwargs)
        return out.logits[:, -1, :]

    def admit(self, prompts: list[list[int]], keys: list[tuple[int, int]], generators: list[torch.Generator]) -> None:
        """Prefill `prompts` once each, repeat for their samples, and join them to the batch."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, cache)
        if not all(type(layer) is DynamicLayer for layer in cache.layers):
            raise Unsupported("a cache with layers other than DynamicLayer")
        reps = len(keys) // len(prompts)
        if reps > 1:
            cache.batch_repeat_interleave(reps)
            mask, logits = mask.repeat_interleave(reps, dim=0), logits.repeat_interleave(reps, dim=0)
        seqs = [Decoded([], False, []) for _ in keys]
        if self.cache is None or not self.rows:
            self.cache, self.mask, self.logits, self.seqs, self.keys = cache, mask, logits, seqs, list(keys)
            self.generators = list(generators)
            return
        # left-pad the shorter side so both have one length, then stack the rows
        old, new = self.mask.shape[1], mask.shape[1]
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            for name in ("keys", "values"):
                a, b = getattr(mine, name), getattr(theirs, name)
                a, b = _left_pad(a, new - old, dim=2), _left_pad(b, old - new, dim=2)
                setattr(mine, name, torch.cat([a, b], dim=0))
        self.mask = torch.cat([_left_pad(self.mask, new - old, dim=1), _left_pad(mask, old - new, dim=1)], dim=0)
        self.logits = torch.cat([self.logits, logits], dim=0)
        self.seqs += seqs
        self.keys += keys
        self.generators += generators

    def step(self, nxt: torch.Tensor, done: list[int]) -> None:
        """Drop the finished rows, then feed every other row its new token."""
        if done:
            gone = set(done)
            keep_list = [j for j in range(self.rows) if j not in gone]
            self.seqs = [self.seqs[j] for j in keep_list]
            self.keys = [self.keys[j] for j in keep_list]
            self.generators = [self.generators[j] for j in keep_list]
            if not keep_list:
                self.cache, self.logits = None, self.logits[:0]
                self.mask = self.mask[:0]
                return
            keep = torch.tensor(keep_list, device=self.device)
            self.cache.batch_select_indices(keep)
            self.mask, nxt = self.mask[keep], nxt[keep]
            first = int(self.mask.any(0).int().argmax())  # columns that are padding in every row left
            if first:
                self.mask = self.mask[:, first:]
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=-1)
        self.logits = self._forward(nxt[:, None], self.mask, self.cache)


def _generator(seed: int, sample: int, device: torch.device) -> torch.Generator:
    """The random stream of one sequence: sample `sample` of the prompt seeded `seed`."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + sample) % 2**63)


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`t` with `width` zeros before it along `dim` (unchanged when width <= 0)."""
    if width <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = width
    return torch.cat([t.new_zeros(shape), t], dim=dim)
