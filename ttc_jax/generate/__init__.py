"""Generation: sampling rules, per-row decoding state, the compiled loop, N samples per prompt.

    generate(model, prompts, max_new_tokens, *, rng, temperature=1.0, top_k=None, top_p=None, min_p=None,
             stop_tokens=(), prompt_lengths=None, pad_id=0, return_logprobs=False, cache_size=None)
    sample(model, prompts, *, n, max_new_tokens, rng, ..., mode="batch"|"vmap", cache=None) -> Samples [P, N]
    prefill_prompts(model, prompts, *, prompt_lengths=None, cache_size=None) -> DecodeState
    continue_from(model, state, max_new_tokens, *, rng, ..., stop_tokens=()) -> (Samples [R], DecodeState)
    feed(model, state, tokens, lengths=None) -> DecodeState
    select_rows(state, idx), repeat_rows(state, n) -> DecodeState
"""

from ttc_jax.generate.best_of_n import DEFAULT_MODE, MODES, sample, sample_keys
from ttc_jax.generate.loop import (Samples, continue_from, decode, feed, generate, prefill, prefill_prompts,
                                   row_keys)
from ttc_jax.generate.sampling import SamplingParams, filter_logits, sample_token, sampling_params
from ttc_jax.generate.state import DecodeState, repeat_rows, select_rows

__all__ = ["DEFAULT_MODE", "MODES", "DecodeState", "Samples", "SamplingParams", "continue_from", "decode", "feed",
           "filter_logits", "generate", "prefill", "prefill_prompts", "repeat_rows", "row_keys", "sample",
           "sample_keys", "sample_token", "sampling_params", "select_rows"]
