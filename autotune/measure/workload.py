"""Assistant-like conversations replayed identically against every configuration.

A workload is a list of conversations. Each request is one user turn, sent with the whole
history before it; assistant turns in that history come from the workload, never from the
model, so every configuration sees byte-identical prompts. Requests are interleaved across
conversations (round robin), so a prompt-state cache has something to win, and histories
grow, so a small context window overflows.

A user workload is a JSONL file, one conversation per line::

    {"id": "trip", "system": "You are Jarvis...", "turns": [
        {"user": "Plan a day in Lisbon.", "assistant": "Start at Belem..."},
        {"user": "And the evening?"}]}

`id` and `system` are optional (the built-in system prompt is used when `system` is
absent); every turn needs a non-empty `user`; `assistant` may be omitted on the last turn.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from autotune.errors import AutotuneError
from autotune.measure.records import WorkloadSummary

BUILTIN_NAME = "builtin"
SYSTEM_PROMPT = (
    "You are Jarvis, a helpful personal assistant running locally on the user's own "
    "computer. Answer clearly and briefly, in plain sentences. When the user asks for a "
    "plan, give numbered steps. When the user asks about facts you are unsure of, say so "
    "rather than guessing. Keep a friendly, calm tone, remember what was said earlier in "
    "the conversation, and refer back to it when it helps. Never invent file names, "
    "commands or numbers that the user did not give you.\n\n"
    "What you remember about the user: they live in a small flat with a gas stove and no "
    "microwave, cook most evenings, and try to waste as little food as possible. They work "
    "as a data analyst, mostly in Python and pandas on a laptop with sixteen gigabytes of "
    "memory, and they often have reports due at the end of the week. They go to the gym "
    "three times a week, prefer mornings for exercise, and do not like meetings after five "
    "in the afternoon. They enjoy city trips of two or three days, travel by train when "
    "they can, and like quiet places to sleep and busy places to eat. They prefer metric "
    "units, twenty-four hour times, and short answers with the most important point first. "
    "If a request is ambiguous, ask one short question before answering. When you suggest "
    "food, use what they already have first. When you plan their week, keep the gym "
    "sessions on different days and leave Friday afternoon light. When you help with "
    "code, prefer small changes they can test at once over large rewrites."
)

BUILTIN_CONVERSATIONS: tuple[dict, ...] = (
    {"id": "kitchen", "turns": [
        {"user": "I have eggs, spinach, feta and some old bread. What can I cook tonight?",
         "assistant": "You could make a spinach and feta strata: tear the bread, layer it "
                      "with wilted spinach and crumbled feta, pour over eggs beaten with a "
                      "splash of milk, and bake for about forty minutes until set and golden."},
        {"user": "I don't have milk. Does that ruin it?",
         "assistant": "Not at all. Use water or a little yogurt instead of milk, or simply "
                      "more eggs. The texture will be a bit firmer, closer to a frittata, "
                      "but it will still hold together and taste good."},
        {"user": "How long should it rest before I cut it?",
         "assistant": "Let it rest for about ten minutes. The eggs finish setting as it "
                      "cools slightly, so the slices come out clean instead of runny."},
        {"user": "Can I keep leftovers for lunch tomorrow?"},
    ]},
    {"id": "trip", "turns": [
        {"user": "I'm going to Lisbon for two days next month. Where should I start?",
         "assistant": "Start in Belem on the first morning: the monastery, the tower and the "
                      "famous custard tarts. In the afternoon take the tram up to Alfama, walk "
                      "the narrow streets and watch the sunset from a viewpoint."},
        {"user": "What about the second day?",
         "assistant": "Spend the second day in Sintra, a short train ride away. See the "
                      "Pena palace early before the crowds, then the Moorish castle, and come "
                      "back to Lisbon for dinner in Bairro Alto."},
        {"user": "Is it better to buy a transport card?",
         "assistant": "Yes. A rechargeable card loaded with credit covers the metro, trams, "
                      "buses and the train to Sintra, and it is cheaper than single tickets."},
        {"user": "Which neighbourhood is quiet enough to sleep well?"},
    ]},
    {"id": "code", "turns": [
        {"user": "My Python script reads a big CSV file and runs out of memory. Ideas?",
         "assistant": "Read it in chunks instead of all at once: pandas read_csv accepts a "
                      "chunksize argument that returns an iterator of smaller frames. Process "
                      "each chunk, keep only the aggregates you need, and combine them "
                      "at the end."},
        {"user": "I also only need three of the forty columns.",
         "assistant": "Then pass usecols with those three column names. Pandas will skip the "
                      "other columns while parsing, which saves both memory and time, and you "
                      "can also set narrower dtypes for them."},
        {"user": "What dtype should I use for a column of small integers?",
         "assistant": "If the values fit between minus 128 and 127, int8 is enough; otherwise "
                      "int16 or int32. If the column can be missing, use the nullable Int8 or "
                      "Int16 types so missing values do not force floats."},
        {"user": "How do I check how much memory the frame uses now?"},
    ]},
    {"id": "week", "turns": [
        {"user": "Help me plan my week: gym three times, a report due Thursday, and a "
                 "dentist appointment on Tuesday afternoon.",
         "assistant": "Here is a plan. Monday: gym in the morning, outline the report in the "
                      "afternoon. Tuesday: write the first half of the report, dentist in the "
                      "afternoon. Wednesday: gym, then finish the draft. Thursday: review and "
                      "submit the report. Friday: gym and a lighter day."},
        {"user": "My boss moved the deadline to Wednesday.",
         "assistant": "Then move the writing earlier. Monday: outline and start writing. "
                      "Tuesday: finish the draft before the dentist. Wednesday morning: review "
                      "and submit, then gym. Keep the other two gym sessions on Thursday "
                      "and Friday."},
        {"user": "Can I fit a haircut in somewhere?",
         "assistant": "Thursday afternoon is free now that the report is done, so book the "
                      "haircut after your gym session that day."},
        {"user": "Remind me what I'm doing on Tuesday?"},
    ]},
)


@dataclass(frozen=True)
class Request:
    """One request: a user turn with its whole history, identical for every configuration."""

    index: int
    id: str
    conversation: str
    turn: int
    messages: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "id": self.id, "conversation": self.conversation,
                "turn": self.turn, "messages": [list(m) for m in self.messages]}


@dataclass(frozen=True)
class Workload:
    name: str
    requests: tuple[Request, ...]

    @property
    def conversations(self) -> int:
        return len({r.conversation for r in self.requests})

    def describe(self) -> WorkloadSummary:
        return WorkloadSummary(self.name, len(self.requests), self.conversations)


def builtin_workload() -> Workload:
    return build(BUILTIN_NAME, list(BUILTIN_CONVERSATIONS))


def load_workload(path: str | os.PathLike[str] | None) -> Workload:
    """The user's JSONL workload, or the built-in one when `path` is None."""
    if path is None:
        return builtin_workload()
    file = Path(path)
    if not file.is_file():
        raise AutotuneError(f"workload {file}: not found (pass a JSONL file, one conversation "
                            "per line)")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise AutotuneError(f"workload {file}: cannot read it ({err})") from None
    conversations = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            conversations.append(parse_conversation(line, f"workload {file} line {number}",
                                                    f"c{number}"))
    if not conversations:
        raise AutotuneError(f"workload {file}: no conversations in it")
    return build(file.stem, conversations)


def parse_conversation(line: str, where: str, default_id: str) -> dict:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise AutotuneError(f"{where}: not valid JSON ({err.msg})") from None
    except RecursionError:  # brackets nested deeper than the parser's stack
        raise AutotuneError(f"{where}: JSON nested too deeply (a conversation is an object "
                            "holding a list of turns)") from None
    if not isinstance(data, dict):
        raise AutotuneError(f"{where}: expected an object with a 'turns' list")
    turns = data.get("turns")
    if not isinstance(turns, list) or not turns:
        raise AutotuneError(f"{where}: 'turns' must be a non-empty list")
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or not isinstance(turn.get("user"), str) \
                or not turn["user"].strip():
            raise AutotuneError(f"{where}: turn {i} needs a non-empty 'user' text")
        if i < len(turns) and not isinstance(turn.get("assistant"), str):
            raise AutotuneError(f"{where}: turn {i} needs an 'assistant' text "
                                "(only the last turn may omit it)")
    system = data.get("system", SYSTEM_PROMPT)
    if not isinstance(system, str):
        raise AutotuneError(f"{where}: 'system' must be text")
    return {"id": str(data.get("id", default_id)), "system": system, "turns": turns}


def build(name: str, conversations: list[dict]) -> Workload:
    """Interleave the conversations' turns round robin into numbered requests."""
    ids = [c["id"] for c in conversations]
    if len(set(ids)) != len(ids):
        raise AutotuneError(f"workload {name}: conversation ids must be unique")
    requests: list[Request] = []
    longest = max(len(c["turns"]) for c in conversations)
    for turn in range(longest):
        for conv in conversations:
            if turn >= len(conv["turns"]):
                continue
            messages = [("system", conv.get("system", SYSTEM_PROMPT))]
            for earlier in conv["turns"][:turn]:
                messages += [("user", earlier["user"]), ("assistant", earlier["assistant"])]
            messages.append(("user", conv["turns"][turn]["user"]))
            requests.append(Request(len(requests), f"{conv['id']}/{turn + 1}", conv["id"],
                                    turn + 1, tuple(messages)))
    return Workload(name, tuple(requests))


def requests_from_dicts(items: list[dict]) -> list[Request]:
    return [Request(d["index"], d["id"], d["conversation"], d["turn"],
                    tuple((r, c) for r, c in d["messages"])) for d in items]
