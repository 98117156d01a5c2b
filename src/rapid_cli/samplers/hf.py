"""Sampler on plain transformers: a batched KV-cache decode loop over the trainer's own model.

A hand-written loop rather than `model.generate`: it records each sampled token's log-prob as it goes
([B] floats per step) instead of keeping full-vocabulary scores for every step ([B, T, V]), and it
shares the trainer's model object, so weight sync costs nothing.
"""

from __future__ import annotations

import torch

from rapid_cli.lora import has_adapters
from rapid_cli.policy import stop_token_ids
from rapid_cli.types import Generations, SamplingParams


def sample_next(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | list[torch.Generator]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (token [B], its log-prob under softmax(logits / T) [B]).

    `gen` is one generator for the batch, or one per row (then a row's draws do not depend on the
    others, so a prompt samples the same completions whichever rank or batch it lands in).
    The recorded log-prob ignores top-p truncation, so it equals what the trainer recomputes.
    """
    logits = logits.float()
    if params.temperature == 0:
        token = logits.argmax(-1)
        return token, torch.log_softmax(logits, -1).gather(-1, token[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / params.temperature, -1)  # [B, V]
    probs = logp.exp()
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p > params.top_p  # keep the smallest prefix reaching top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    if isinstance(gen, list):
        rows = probs.cpu()
        token = torch.cat([torch.multinomial(rows[i], 1, generator=g) for i, g in enumerate(gen)]).to(logits.device)
    else:
        token = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)


class HFSampler:
    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.stop_ids = stop_token_ids(model, tokenizer)

    @torch.no_grad()
    def sync_weights(self, weights) -> None:
        """Copies each (name, tensor) into this sampler's model, one at a time. A tensor that already is this
        model's own (the trainer's model object, shared unless FSDP shards it) is not copied. A LoRA model
        generates through its own adapters: nothing to copy, and the merged weights are not even computed."""
        if has_adapters(self.model):
            return
        own = self.model.state_dict()
        names = set(own)
        for name, tensor in weights:
            if name not in own:
                raise KeyError(f"weight sync: {name!r} is not a weight of the sampler's model")
            names.discard(name)
            if tensor.data_ptr() != own[name].data_ptr():
                own[name].copy_(tensor)
        if names:
            raise KeyError(f"weight sync: no new value for {len(names)} weights of the sampler's model, e.g. "
                           f"{min(names)!r}")

    def release_memory(self) -> None:
        pass  # the KV cache lives only inside generate()

    def close(self) -> None:
        pass  # the trainer's own model: nothing of the sampler's to free

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Generations:
        rows = [p for p in prompts for _ in range(params.n)]  # n completions per prompt, grouped
        if params.prompt_seeds is None:
            gen = torch.Generator().manual_seed(params.seed)
        else:  # one generator per row, so a prompt's samples do not depend on its batch
            gens = [torch.Generator().manual_seed(s * 1009 + k) for s in params.prompt_seeds for k in range(params.n)]
        out = Generations([], [], [], [])
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(rows), self.batch_size):
                batch_gen = gen if params.prompt_seeds is None else gens[start : start + self.batch_size]
                ids, lps, reasons = self._decode(rows[start : start + self.batch_size], params, batch_gen)
                out.completion_ids += ids
                out.logprobs += lps
                out.finish_reasons += reasons
        finally:
            self.model.train(was_training)
        out.texts = [cut_at_stop(t, params.stop) for t in
                     self.tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)]
        return out

    def _decode(self, prompts: list[list[int]], params: SamplingParams, gen):
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        B, P = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((B, P), pad, dtype=torch.long)
        attention = torch.zeros((B, P), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, P - len(p) :] = torch.tensor(p)
            attention[i, P - len(p) :] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        position = (attention.cumsum(-1) - 1).clamp(min=0)  # [B, P]
        stop = torch.tensor(sorted(self.stop_ids), device=device)

        tokens, logprobs = [], []  # per step: [B] each
        done = torch.zeros(B, dtype=torch.bool, device=device)
        by_string = torch.zeros(B, dtype=torch.bool, device=device)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        cache = None
        step_ids = input_ids
        for _ in range(params.max_tokens):
            out = self.model(
                input_ids=step_ids,
                attention_mask=attention,
                position_ids=position,
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            token, logp = sample_next(out.logits[:, -1], params, gen)  # [B], [B]
            token = token.masked_fill(done, pad)
            tokens.append(token)
            logprobs.append(logp)
            lengths += (~done).long()
            met = self._met_stop_string(tokens, done, params.stop) if params.stop else torch.zeros_like(done)
            by_string |= met
            done |= torch.isin(token, stop) | met
            if done.all():
                break
            step_ids = token[:, None]  # [B, 1]
            attention = torch.cat([attention, torch.ones((B, 1), dtype=attention.dtype, device=device)], -1)
            position = position[:, -1:] + 1

        token_mat = torch.stack(tokens, 1).tolist()  # [B, T]
        logp_mat = torch.stack(logprobs, 1).tolist()
        ids, lps, reasons = [], [], []
        for i, (n, string) in enumerate(zip(lengths.tolist(), by_string.tolist(), strict=True)):
            ids.append(token_mat[i][:n])
            lps.append(logp_mat[i][:n])
            reasons.append("stop" if string or (n and token_mat[i][n - 1] in self.stop_ids) else "length")
        return ids, lps, reasons

    def _met_stop_string(self, tokens: list[torch.Tensor], done: torch.Tensor, stops: tuple[str, ...]) -> torch.Tensor:
        """[B] bool: the rows still going whose text now holds a stop string (it appeared with the newest token,
        or the row would have ended before). The whole text is decoded, not a tail: a tail can decode differently
        (a SentencePiece leading space, a multi-byte character cut in two), which would stop a token late."""
        met = torch.zeros_like(done)
        going = (~done).nonzero().flatten().tolist()
        if going:
            so_far = torch.stack(tokens, 1)[going].tolist()
            texts = self.tokenizer.batch_decode(so_far, skip_special_tokens=True)
            for row, text in zip(going, texts, strict=True):
                met[row] = any(s in text for s in stops)
        return met


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """`text` up to the start of the stop string that ends first in it (vLLM's rule; ties: the first listed)."""
    found = [(i + len(s), order, i) for order, s in enumerate(stops) if (i := text.find(s)) >= 0]
    return text[: min(found)[2]] if found else text
