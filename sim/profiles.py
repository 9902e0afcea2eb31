"""Calibrated replica profiles: KV cache geometry, scheduler limits, step-time model.

One engine step costs (seconds, before `time_scale`):

    step_overhead_s                                   (if the step does any work)
  + prefill_s_per_token     * uncached prompt tokens computed this step
  + prefill_attn_s_per_token_ktok * sum over those tokens of (context length / 1000)
  + decode_s_per_seq        * sequences decoding this step
  + decode_s_per_ctx_ktok   * sum over those sequences of (context length / 1000)
  + lora_load_s             * adapters loaded into a free slot this step

and a request occupies the API server for `api_overhead_s + api_s_per_prompt_token *
prompt tokens` (HTTP, chat template, tokenizer) before the engine sees it; the API
server takes requests one at a time (vLLM's is one Python process), so a burst
reaches the engine spread out.

Sources and derivations are in sim/README.md ("Calibration").
"""

import dataclasses


@dataclasses.dataclass
class Profile:
    name: str
    model: str                      # served model name (metrics label model_name)
    block_size: int                 # tokens per KV block
    num_blocks: int                 # KV blocks (vllm:cache_config_info num_gpu_blocks)
    max_num_batched_tokens: int     # token budget of one step (chunked prefill)
    max_num_seqs: int               # running requests at most
    max_model_len: int              # prompt + output tokens at most
    step_overhead_s: float
    prefill_s_per_token: float
    prefill_attn_s_per_token_ktok: float
    decode_s_per_seq: float
    decode_s_per_ctx_ktok: float
    api_overhead_s: float = 0.0
    api_s_per_prompt_token: float = 0.0
    max_loras: int = 1              # adapters in one batch at most (vLLM --max-loras)
    lora_load_s: float = 0.0        # loading an adapter not in a GPU slot
    lora_adapters: tuple = ()       # served adapter names (empty: LoRA off)
    num_gpu_blocks_override: object = None  # as shown in cache_config_info
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: object = None
    time_scale: float = 1.0         # multiplies every simulated duration
    default_max_tokens: object = None  # None: max_model_len - prompt (vLLM's default)
    notes: str = ""

    def with_(self, **changes):
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown profile fields: {sorted(unknown)}")
        if "lora_adapters" in changes and isinstance(changes["lora_adapters"], str):
            changes["lora_adapters"] = tuple(a for a in changes["lora_adapters"].split(",") if a)
        return dataclasses.replace(self, **changes)

    def check(self):
        if self.max_model_len > self.num_blocks * self.block_size:
            raise ValueError(f"{self.name}: max_model_len {self.max_model_len} exceeds the KV "
                             f"cache ({self.num_blocks} x {self.block_size} tokens)")
        if self.block_size < 1 or self.num_blocks < 1 or self.max_num_batched_tokens < 1:
            raise ValueError(f"{self.name}: sizes must be positive")
        return self

    def prefill_seconds(self, tokens, context=0):
        """One step prefilling `tokens` uncached tokens after `context` cached ones."""
        attn = tokens * (context + tokens / 2) / 1000
        return (self.step_overhead_s + tokens * self.prefill_s_per_token +
                attn * self.prefill_attn_s_per_token_ktok)

    def decode_seconds(self, seqs, context_each):
        return (self.step_overhead_s + seqs * self.decode_s_per_seq +
                seqs * context_each / 1000 * self.decode_s_per_ctx_ktok)


# Llama-2-7B (fp16, 32 layers, d=4096, 32 KV heads: 512 KiB of KV per token,
# 13.5 GB of weights, ~14 GFLOP per token) on one A100-SXM4-80GB (312 TFLOPS
# dense bf16, 2.04 TB/s). Roofline with typical efficiencies; see sim/README.md.
A100_7B = Profile(
    name="a100-7b", model="meta-llama/Llama-2-7b-hf",
    block_size=16, num_blocks=7000, max_num_batched_tokens=2048, max_num_seqs=256,
    max_model_len=4096,
    step_overhead_s=0.008,            # weights read 6.6 ms + launch/scheduling
    prefill_s_per_token=0.00008,      # 14 GFLOP / (312 TFLOPS * ~0.55): ~12.5k tok/s
    prefill_attn_s_per_token_ktok=0.0000042,  # 0.52 GFLOP per token per 1k context
    decode_s_per_seq=0.0001,          # per-sequence GEMM share + sampling
    decode_s_per_ctx_ktok=0.00027,    # 0.5 GiB of KV per 1k tokens at ~2 TB/s
    api_overhead_s=0.003, api_s_per_prompt_token=0.000001,
    max_loras=4, lora_load_s=0.02,
    notes="Llama-2-7B fp16 on A100-80GB, vLLM V1 defaults (A100: 2048 batched tokens)",
)

# The same model on one A10 (24 GB, 125 TFLOPS dense fp16, 600 GB/s): small KV.
A10_7B = Profile(
    name="a10-7b", model="meta-llama/Llama-2-7b-hf",
    block_size=16, num_blocks=790, max_num_batched_tokens=2048, max_num_seqs=256,
    max_model_len=4096,
    step_overhead_s=0.025,            # weights read 22.5 ms + overhead
    prefill_s_per_token=0.000224,     # 14 GFLOP / (125 TFLOPS * 0.5): ~4.5k tok/s
    prefill_attn_s_per_token_ktok=0.0000105,
    decode_s_per_seq=0.00025,
    decode_s_per_ctx_ktok=0.0009,     # 0.5 GiB per 1k tokens at 600 GB/s
    api_overhead_s=0.003, api_s_per_prompt_token=0.000001,
    max_loras=4, lora_load_s=0.03,
    notes="Llama-2-7B fp16 on A10-24GB, vLLM V1 defaults",
)

# The real vLLM 0.32 CPU replica of vllm_replicas/ (16M-parameter random Llama,
# one core, --num-gpu-blocks-override 256, CPU block size 128), fitted to
# vllm_replicas/results/calibration-real-*.json (least squares; see README).
VLLM_CPU_TINY = Profile(
    name="vllm-cpu-tiny", model="tiny",
    block_size=128, num_blocks=256, max_num_batched_tokens=2048, max_num_seqs=128,
    max_model_len=4096,
    step_overhead_s=0.0046,           # decode step at batch 1: 4.75-5.2 ms measured
    prefill_s_per_token=0.00008,      # fitted: 0.080 ms per uncached token
    prefill_attn_s_per_token_ktok=0.0000081,  # fitted: 0.0081 ms per token per 1k context
    decode_s_per_seq=0.0002,          # decode step at batch 16: 6.7-8.4 ms, 32: 12.5-13 ms
    decode_s_per_ctx_ktok=0.00001,
    # fitted: 6.8 ms constant (step 4.6 + API ~2.2) and 4.7 us per prompt token;
    # the simulator's own HTTP/tokenizer work (~1-2 ms, ~1 us/token) is real
    # time here, so it is subtracted.
    api_overhead_s=0.0012, api_s_per_prompt_token=0.0000035,
    max_loras=1, lora_load_s=0.01,
    num_gpu_blocks_override=256, gpu_memory_utilization=0.92,
    kv_cache_memory_bytes=1073741824,
    notes="vLLM 0.32.0 CPU, tiny random Llama, 1 core per replica, 2 replicas on 2 cores "
          "(measured here)",
)

PROFILES = {p.name: p for p in (A100_7B, A10_7B, VLLM_CPU_TINY)}


def get(profile, **overrides):
    """A Profile from a name or a Profile, with field overrides."""
    if isinstance(profile, str):
        try:
            profile = PROFILES[profile]
        except KeyError:
            raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}") from None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return (profile.with_(**overrides) if overrides else profile).check()
