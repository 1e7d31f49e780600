"""Workloads: the built-in one, user JSONL files, and errors that name the line."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from autotune.errors import AutotuneError
from autotune.measure.records import WorkloadSummary
from autotune.measure.workload import (
    BUILTIN_CONVERSATIONS,
    SYSTEM_PROMPT,
    build,
    builtin_workload,
    load_workload,
    requests_from_dicts,
)


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def conversation(**fields: object) -> str:
    data = {"turns": [{"user": "Hi.", "assistant": "Hello."}, {"user": "Bye."}], **fields}
    return json.dumps(data)


def test_builtin_interleaves_round_robin() -> None:
    workload = builtin_workload()
    ids = [c["id"] for c in BUILTIN_CONVERSATIONS]
    turns = max(len(c["turns"]) for c in BUILTIN_CONVERSATIONS)
    assert [r.id for r in workload.requests] == [
        f"{cid}/{turn}" for turn in range(1, turns + 1) for cid in ids]
    assert [r.index for r in workload.requests] == list(range(len(workload.requests)))
    assert workload.conversations == 4
    assert len(workload.requests) == 16
    assert workload.describe() == WorkloadSummary("builtin", requests=16, conversations=4)


def test_builtin_histories_grow() -> None:
    by_conversation: dict[str, list] = {}
    for request in builtin_workload().requests:
        by_conversation.setdefault(request.conversation, []).append(request)
    for requests in by_conversation.values():
        for turn, request in enumerate(requests, start=1):
            assert request.turn == turn
            assert len(request.messages) == 2 * turn
            assert request.messages[0] == ("system", SYSTEM_PROMPT)
            assert request.messages[-1][0] == "user"
        for earlier, later in itertools.pairwise(requests):
            # the later request carries the earlier one whole, then an assistant turn
            assert later.messages[: len(earlier.messages)] == earlier.messages
            assert later.messages[len(earlier.messages)][0] == "assistant"


def test_builtin_assistant_turns_come_from_the_workload() -> None:
    source = {c["id"]: c["turns"] for c in BUILTIN_CONVERSATIONS}
    for request in builtin_workload().requests:
        history = request.messages[1:-1]
        turns = source[request.conversation]
        assert [m[1] for m in history if m[0] == "assistant"] == [
            t["assistant"] for t in turns[: request.turn - 1]]
        assert [m[1] for m in history if m[0] == "user"] == [
            t["user"] for t in turns[: request.turn - 1]]
        assert request.messages[-1][1] == turns[request.turn - 1]["user"]


def test_identical_requests_on_two_builds(tiny_workload_file: Path) -> None:
    assert builtin_workload() == builtin_workload()
    assert load_workload(None) == builtin_workload()
    assert load_workload(tiny_workload_file) == load_workload(str(tiny_workload_file))


def test_requests_survive_the_wire() -> None:
    requests = builtin_workload().requests
    wire = json.loads(json.dumps([r.to_dict() for r in requests]))
    assert tuple(requests_from_dicts(wire)) == requests


def test_tiny_jsonl(tiny_workload_file: Path) -> None:
    workload = load_workload(tiny_workload_file)
    assert workload.name == "tiny"
    assert [r.id for r in workload.requests] == ["fruit/1", "colour/1", "fruit/2", "colour/2"]
    follow_up = workload.requests[2]
    assert follow_up.messages == (("system", "You are brief."), ("user", "Name a fruit."),
                                  ("assistant", "Apple."), ("user", "Another one?"))


def test_jsonl_defaults(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "w.jsonl", conversation(), "", conversation(id="named"))
    workload = load_workload(path)
    assert [r.conversation for r in workload.requests[:2]] == ["c1", "named"]
    assert workload.requests[0].messages[0] == ("system", SYSTEM_PROMPT)


def test_jsonl_uneven_conversations(tmp_path: Path) -> None:
    short = json.dumps({"id": "s", "turns": [{"user": "Only one."}]})
    path = write_lines(tmp_path / "w.jsonl", conversation(id="long"), short)
    assert [r.id for r in load_workload(path).requests] == ["long/1", "s/1", "long/2"]


@pytest.mark.parametrize(("lines", "words"), [
    ([conversation(), "{not json"], ["line 2", "not valid JSON"]),
    ([conversation(), json.dumps({"turns": [{"assistant": "x"}]})], ["line 2", "turn 1",
                                                                      "'user'"]),
    ([json.dumps({"turns": [{"user": "  ", "assistant": "x"}, {"user": "y"}]})],
     ["line 1", "turn 1", "'user'"]),
    ([json.dumps({"turns": [{"user": "a"}, {"user": "b"}]})], ["line 1", "turn 1",
                                                              "'assistant'"]),
    ([conversation(), "", json.dumps([1, 2])], ["line 3", "object"]),
    ([json.dumps({"turns": []})], ["line 1", "'turns'"]),
    ([json.dumps({"id": "x"})], ["line 1", "'turns'"]),
    ([conversation(system=5)], ["line 1", "'system'"]),
])
def test_jsonl_errors_name_the_line(tmp_path: Path, lines: list[str], words: list[str]
                                    ) -> None:
    path = write_lines(tmp_path / "bad.jsonl", *lines)
    with pytest.raises(AutotuneError) as raised:
        load_workload(path)
    message = str(raised.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message


def test_jsonl_first_line_is_line_1(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", "[oops")
    with pytest.raises(AutotuneError, match=r"line 1\b"):
        load_workload(path)


def test_jsonl_duplicate_ids(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "dup.jsonl", conversation(id="a"), conversation(id="a"))
    with pytest.raises(AutotuneError, match="unique"):
        load_workload(path)


@pytest.mark.parametrize("text", ["", "\n\n   \n"])
def test_jsonl_empty(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AutotuneError, match="no conversations"):
        load_workload(path)


def test_jsonl_missing(tmp_path: Path) -> None:
    with pytest.raises(AutotuneError, match="not found"):
        load_workload(tmp_path / "nope.jsonl")


def test_jsonl_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "binary.jsonl"
    path.write_bytes(b'{"turns": [{"user": "\xff"}]}\n')
    with pytest.raises(AutotuneError, match="cannot read it"):
        load_workload(path)


def test_build_refuses_duplicate_ids() -> None:
    turns = [{"user": "a"}]
    with pytest.raises(AutotuneError, match="unique"):
        build("x", [{"id": "a", "turns": turns}, {"id": "a", "turns": turns}])
