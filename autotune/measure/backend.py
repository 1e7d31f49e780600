"""The runtime the JARVIS_* variables configure: a Llama, a request lock, the context cache.

This is the Jarvis GGUF backend as a trial sees it. `Backend.complete` serves one request:
it renders the conversation with the model's chat template, drops the oldest turns when
the conversation no longer fits the context window (a "reload": the prompt must be
re-evaluated), restores the longest cached prompt state when the context cache is on,
and generates exactly `n_tokens` tokens with end-of-generation tokens suppressed, so that
every configuration does identical work.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from autotune.measure.settings import Settings
from autotune.measure.workload import Request

if TYPE_CHECKING:
    from llama_cpp import LlamaState

    Tokens = Sequence[int] | np.ndarray

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
TEMPERATURE = 0.7
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def common_prefix(a: Tokens, b: Tokens) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    left, right = np.asarray(a[:n]), np.asarray(b[:n])
    mismatch = np.flatnonzero(left != right)
    return int(mismatch[0]) if mismatch.size else n


class PromptCache:
    """Up to `capacity` saved prompt states, least recently used evicted first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[tuple[int, ...], LlamaState] = OrderedDict()

    def longest(self, tokens: Sequence[int]) -> tuple[tuple[int, ...] | None, int]:
        """The cached key sharing the longest prefix with `tokens`, and that length."""
        best, best_len = None, 0
        for key in self.entries:
            length = common_prefix(key, tokens)
            if length > best_len:
                best, best_len = key, length
        return best, best_len

    def take(self, key: tuple[int, ...]) -> LlamaState:
        self.entries.move_to_end(key)
        return self.entries[key]

    def put(self, tokens: Sequence[int], state: LlamaState) -> None:
        key = tuple(tokens)
        self.entries[key] = state
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)


@dataclass
class Served:
    """What one request cost; the worker adds timing around the lock."""

    prompt_tokens: int
    reused_tokens: int
    generated: int
    ttft_s: float
    service_s: float
    cache_hit: bool | None
    reuse_source: str
    reload: bool
    dropped_turns: int
    cache_s: float
    restored_tokens: int = 0  # restored from the cache beyond what the live context held


class Backend:
    """A Llama built from Settings, serving requests one at a time."""

    def __init__(self, model_path: str, settings: Settings) -> None:
        from llama_cpp import Llama, LogitsProcessorList

        self.settings = settings
        self.logits_processor = LogitsProcessorList([self._suppress_end])
        started = time.perf_counter()
        kv_type = GGML_TYPE_F16 if settings.f16_kv else GGML_TYPE_F32
        self.llm = Llama(
            model_path=model_path,
            n_ctx=settings.context_window,
            n_threads=settings.n_threads,
            n_threads_batch=settings.n_threads,
            n_gpu_layers=settings.n_gpu_layers,
            n_batch=settings.n_batch,
            n_ubatch=settings.n_ubatch,
            flash_attn=settings.flash_attn,
            type_k=kv_type,
            type_v=kv_type,
            seed=settings.seed,
            verbose=settings.verbose,
        )
        self.load_s = time.perf_counter() - started
        # llama.cpp rounds n_ctx up (to a multiple of 256) but the token buffer keeps the
        # requested size: the requested window is the real limit.
        self.n_ctx = min(self.llm.n_ctx(), settings.context_window)
        self.lock = threading.Lock()
        self.cache = PromptCache(settings.max_cache_size) if settings.enable_context_cache \
            else None
        self.last_prompt: dict[str, list[int]] = {}
        self.template = self._chat_template()
        self.banned = self._end_of_generation_tokens()

    def _chat_template(self):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        meta = self.llm.metadata
        template = meta.get("tokenizer.chat_template") or CHATML
        eos = self.llm.detokenize([self.llm.token_eos()], special=True).decode(errors="ignore")
        bos = self.llm.detokenize([self.llm.token_bos()], special=True).decode(errors="ignore")
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    def _end_of_generation_tokens(self) -> np.ndarray:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        ids = [t for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        return np.array(ids or [self.llm.token_eos()], dtype=np.int64)

    def render(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        prompt = self.template(messages=[{"role": r, "content": c} for r, c in messages]).prompt
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def fit(self, messages: list[tuple[str, str]], n_tokens: int) -> tuple[list[int], int]:
        """The prompt tokens, dropping the oldest user/assistant pairs until it fits n_ctx."""
        dropped = 0
        tokens = self.render(messages)
        while len(tokens) + n_tokens > self.n_ctx and len(messages) > 2:
            first = 1 if messages[0][0] == "system" else 0
            del messages[first:first + 2]
            dropped += 1
            tokens = self.render(messages)
        room = self.n_ctx - n_tokens
        if len(tokens) > room:  # even the last turn alone is too long: keep its tail
            tokens = tokens[-max(1, room):]
            dropped += 1
        return tokens, dropped

    def complete(self, request: Request, n_tokens: int) -> Served:
        """Serve one request under the backend's lock."""
        with self.lock:
            return self._serve(request, n_tokens)

    def _serve(self, request: Request, n_tokens: int) -> Served:
        started = time.perf_counter()
        tokens, dropped = self.fit(list(request.messages), n_tokens)
        live = common_prefix(self.llm.input_ids[: self.llm.n_tokens], tokens)
        reused, source = live, "live" if live else "none"
        restored = 0
        cache_s = 0.0  # without a cache, none of the request's time is the cache's
        if self.cache is not None:
            cache_started = time.perf_counter()
            key, cached = self.cache.longest(tokens)
            if key is not None and cached > live:
                self.llm.load_state(self.cache.take(key))
                reused, source = cached, "cache"
                restored = cached - live
            cache_s = time.perf_counter() - cache_started
        previous = self.last_prompt.get(request.conversation)
        hit = None if previous is None else reused >= common_prefix(previous, tokens)
        self.last_prompt[request.conversation] = tokens
        self.llm.set_seed(self.settings.seed)
        ttft = 0.0
        generated = 0
        for _ in self.llm.generate(tokens, top_k=self.settings.top_k, top_p=self.settings.top_p,
                                   temp=TEMPERATURE, repeat_penalty=self.settings.repeat_penalty,
                                   logits_processor=self.logits_processor):
            if generated == 0:
                ttft = time.perf_counter() - started
                if self.cache is not None:  # the state now holds exactly the prompt
                    saving = time.perf_counter()
                    self.cache.put(tokens, self.llm.save_state())
                    cache_s += time.perf_counter() - saving
            generated += 1
            if generated >= n_tokens:
                break
        return Served(
            prompt_tokens=len(tokens), reused_tokens=min(reused, len(tokens)),
            generated=generated, ttft_s=ttft, service_s=time.perf_counter() - started,
            cache_hit=hit, reuse_source=source, reload=dropped > 0, dropped_turns=dropped,
            cache_s=cache_s, restored_tokens=min(restored, len(tokens)))

    def _suppress_end(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        scores[self.banned] = -np.inf
        return scores

    def forget(self) -> None:
        """Drop the live context and the cache (after warm-up), keeping the loaded model."""
        self.llm.reset()
        self.last_prompt.clear()
        if self.cache is not None:
            self.cache.entries.clear()

    def set_threads(self, n_threads: int) -> None:
        import llama_cpp

        llama_cpp.llama_set_n_threads(self.llm.ctx, n_threads, n_threads)
