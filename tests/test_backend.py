"""The backend in-process against the real model: exact token counts, cache reuse, reloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.measure.backend import Backend, PromptCache, Served, common_prefix
from autotune.measure.settings import Settings
from autotune.measure.workload import Workload, build

TOKENS = 4
LONG_TURNS = 6


def long_conversation() -> Workload:
    """One conversation whose history outgrows a 256-token context after a few turns."""
    turns = [{"user": f"Tell me about topic {i} in detail, with everything you know about it.",
              "assistant": f"Topic {i} is a large subject with many facets, and this answer "
                           "goes on about it for quite a while, sentence after sentence."}
             for i in range(LONG_TURNS)]
    turns.append({"user": "Summarise all of that."})
    return build("long", [{"id": "long", "system": "Be brief.", "turns": turns}])


def replay(backend: Backend, workload: Workload, n_tokens: int = TOKENS) -> list[Served]:
    return [backend.complete(request, n_tokens) for request in workload.requests]


@pytest.fixture(scope="module")
def cached(model_path: Path) -> Backend:
    return Backend(str(model_path), Settings(n_threads=2, context_window=512))


@pytest.fixture(scope="module")
def uncached(model_path: Path) -> Backend:
    return Backend(str(model_path),
                   Settings(n_threads=2, context_window=512, enable_context_cache=False))


@pytest.fixture(scope="module")
def cached_run(cached: Backend, tiny_workload: Workload) -> list[Served]:
    cached.forget()
    return replay(cached, tiny_workload)


@pytest.fixture(scope="module")
def uncached_run(uncached: Backend, tiny_workload: Workload) -> list[Served]:
    uncached.forget()
    return replay(uncached, tiny_workload)


def test_backend_is_built_from_settings(cached: Backend, uncached: Backend) -> None:
    assert cached.n_ctx == 512
    assert cached.load_s > 0
    assert isinstance(cached.cache, PromptCache)
    assert cached.cache.capacity == 100
    assert uncached.cache is None
    assert cached.banned.size >= 1
    assert cached.llm.token_eos() in cached.banned


def test_every_request_generates_exactly_n_tokens(cached_run: list[Served],
                                                  uncached_run: list[Served]) -> None:
    assert [s.generated for s in cached_run + uncached_run] == [TOKENS] * 8


@pytest.mark.parametrize("n_tokens", [1, 24])
def test_end_of_sequence_is_suppressed(cached: Backend, tiny_workload: Workload,
                                       n_tokens: int) -> None:
    # "Another one?" after "Apple." gets a one-word reply: without suppression it would stop
    served = cached.complete(tiny_workload.requests[2], n_tokens)
    assert served.generated == n_tokens
    assert 0 < served.ttft_s <= served.service_s


def test_first_turns_have_no_cache_verdict(cached_run: list[Served]) -> None:
    first, second = cached_run[:2]
    assert first.cache_hit is None and second.cache_hit is None
    assert first.reuse_source == "none"
    assert first.reused_tokens == 0
    # the second conversation shares the system prompt with the live context
    assert second.reuse_source == "live"
    assert 0 < second.reused_tokens < second.prompt_tokens


def test_cache_on_interleaved_follow_up_restores_from_cache(cached_run: list[Served]) -> None:
    first, _, follow_up, other_follow_up = cached_run
    for served in (follow_up, other_follow_up):
        assert served.reuse_source == "cache"
        assert served.cache_hit is True
        assert served.reload is False
    # the whole first-turn prompt is a prefix of the follow-up's prompt
    assert follow_up.reused_tokens >= first.prompt_tokens
    assert follow_up.prompt_tokens > first.prompt_tokens


def test_cache_off_interleaved_follow_up_misses(uncached_run: list[Served]) -> None:
    first, _, follow_up, other_follow_up = uncached_run
    for served in (follow_up, other_follow_up):
        assert served.cache_hit is False
        assert served.reuse_source == "live"
        assert served.reused_tokens < first.prompt_tokens
    assert [s.cache_s for s in uncached_run] == [0.0] * 4  # no cache, no time spent on one
    assert [s.restored_tokens for s in uncached_run] == [0] * 4


def test_cache_on_every_request_spends_time_saving_its_state(cached_run: list[Served]) -> None:
    # each request saves its prompt's state, the follow-ups restore one too
    assert all(s.cache_s > 0 for s in cached_run)
    assert [s.restored_tokens > 0 for s in cached_run] == [False, False, True, True]


def test_cache_and_no_cache_see_identical_prompts(cached_run: list[Served],
                                                  uncached_run: list[Served]) -> None:
    assert [s.prompt_tokens for s in cached_run] == [s.prompt_tokens for s in uncached_run]


def test_cache_holds_one_state_per_prompt(cached: Backend, cached_run: list[Served]) -> None:
    assert cached.cache is not None
    assert len(cached.cache.entries) >= len(cached_run)
    cached.forget()
    assert len(cached.cache.entries) == 0
    assert cached.last_prompt == {}


def test_small_cache_evicts_and_misses(model_path: Path, tiny_workload: Workload) -> None:
    backend = Backend(str(model_path), Settings(n_threads=2, context_window=512,
                                                max_cache_size=1))
    served = replay(backend, tiny_workload)
    assert served[2].cache_hit is False  # fruit/1's state was evicted by colour/1
    assert served[2].reuse_source == "live"
    assert len(backend.cache.entries) == 1


# llama.cpp pads n_ctx up to a multiple of 256 internally, while llama-cpp-python sizes its
# token buffers from the requested value: 300 exercises a window that is not a multiple.
@pytest.mark.parametrize("context_window", [256, 300])
def test_tiny_context_drops_turns_instead_of_crashing(model_path: Path,
                                                      context_window: int) -> None:
    backend = Backend(str(model_path), Settings(n_threads=2, context_window=context_window,
                                                enable_context_cache=False))
    served = replay(backend, long_conversation())
    assert [s.generated for s in served] == [TOKENS] * (LONG_TURNS + 1)
    assert all(s.prompt_tokens + TOKENS <= context_window for s in served)
    assert served[0].reload is False
    assert served[-1].reload is True
    assert served[-1].dropped_turns >= 1
    dropped = [s.dropped_turns for s in served]
    assert dropped == sorted(dropped)  # histories only grow, so drops never shrink
    assert all(s.reload == (s.dropped_turns > 0) for s in served)


def test_a_single_turn_longer_than_the_context_keeps_its_tail(model_path: Path) -> None:
    backend = Backend(str(model_path), Settings(n_threads=2, context_window=128))
    huge = build("huge", [{"id": "huge", "system": "Be brief.",
                           "turns": [{"user": "word " * 400}]}])
    served = backend.complete(huge.requests[0], TOKENS)
    assert served.generated == TOKENS
    assert served.reload is True
    assert served.dropped_turns == 1
    assert 0 < served.prompt_tokens <= 128 - TOKENS


def test_render_uses_the_model_chat_template(cached: Backend) -> None:
    tokens = cached.render([("system", "S."), ("user", "U.")])
    text = cached.llm.detokenize(tokens, special=True).decode()
    assert text.startswith("<|im_start|>system\nS.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix([1, 2], [1, 2, 3, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [1]) == 0


def test_prompt_cache_lru_eviction() -> None:
    cache = PromptCache(capacity=2)
    cache.put([1, 2, 3], "a")
    cache.put([4, 5], "b")
    assert cache.take((1, 2, 3)) == "a"  # now most recently used
    cache.put([6], "c")  # over capacity: evicts (4, 5), the least recently used
    assert list(cache.entries) == [(1, 2, 3), (6,)]
    cache.put([7], "d")  # evicts (1, 2, 3)
    assert list(cache.entries) == [(6,), (7,)]


def test_prompt_cache_put_refreshes_an_existing_key() -> None:
    cache = PromptCache(capacity=2)
    cache.put([1], "old")
    cache.put([2], "b")
    cache.put([1], "new")
    cache.put([3], "c")
    assert list(cache.entries) == [(1,), (3,)]
    assert cache.entries[(1,)] == "new"


def test_prompt_cache_longest_prefix() -> None:
    cache = PromptCache(capacity=3)
    cache.put([1, 2], "short")
    cache.put([1, 2, 3, 4], "long")
    cache.put([9, 9, 9, 9, 9], "other")
    assert cache.longest([1, 2, 3, 4, 5]) == ((1, 2, 3, 4), 4)
    assert cache.longest([1, 2, 7]) == ((1, 2), 2)
    assert cache.longest([8]) == (None, 0)
    assert PromptCache(capacity=1).longest([1]) == (None, 0)
