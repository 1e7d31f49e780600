"""The JARVIS_* contract: parsing, defaults, validation, env files, round trips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autotune.errors import AutotuneError
from autotune.measure.settings import (
    BY_NAME,
    CORE_FIELDS,
    EXTENDED_FIELDS,
    VARIABLES,
    Settings,
    default_threads,
    load_env_file,
)

# One valid text per variable and the typed value it must parse to.
VALID = {
    "JARVIS_MODEL_CONTEXT_WINDOW": ("2048", 2048),
    "JARVIS_N_THREADS": ("3", 3),
    "JARVIS_N_GPU_LAYERS": ("-1", -1),
    "JARVIS_ENABLE_CONTEXT_CACHE": ("false", False),
    "JARVIS_MAX_CACHE_SIZE": ("7", 7),
    "JARVIS_N_BATCH": ("256", 256),
    "JARVIS_N_UBATCH": ("128", 128),
    "JARVIS_FLASH_ATTN": ("false", False),
    "JARVIS_F16_KV": ("false", False),
    "JARVIS_SEED": ("-3", -3),
    "JARVIS_VERBOSE": ("true", True),
    "JARVIS_MAX_TOKENS": ("100", 100),
    "JARVIS_TOP_P": ("0.5", 0.5),
    "JARVIS_TOP_K": ("0", 0),
    "JARVIS_REPEAT_PENALTY": ("1.25", 1.25),
}

# The design's table of backend defaults (n_threads is min(10, cpu count)).
DEFAULTS = {
    "context_window": 4096, "n_gpu_layers": -1, "enable_context_cache": True,
    "max_cache_size": 100, "n_batch": 512, "n_ubatch": 512, "flash_attn": True,
    "f16_kv": True, "seed": 42, "verbose": False, "max_tokens": 7000, "top_p": 0.95,
    "top_k": 40, "repeat_penalty": 1.1,
}

# Values of the right type but out of range, one per bounded variable.
OUT_OF_RANGE = {
    "JARVIS_MODEL_CONTEXT_WINDOW": "-5",
    "JARVIS_N_THREADS": "0",
    "JARVIS_N_GPU_LAYERS": "-2",
    "JARVIS_MAX_CACHE_SIZE": "0",
    "JARVIS_N_BATCH": "0",
    "JARVIS_N_UBATCH": "-1",
    "JARVIS_MAX_TOKENS": "0",
    "JARVIS_TOP_P": "1.5",
    "JARVIS_TOP_K": "-1",
    "JARVIS_REPEAT_PENALTY": "-0.1",
}


def test_every_variable_has_a_valid_example() -> None:
    assert set(VALID) == {v.name for v in VARIABLES}


def test_defaults_match_the_contract() -> None:
    settings = Settings()
    for name, value in DEFAULTS.items():
        assert getattr(settings, name) == value, name
    assert settings.n_threads == default_threads() == min(10, os.cpu_count() or 1)


def test_empty_environment_gives_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_blank_value_keeps_the_default() -> None:
    assert Settings.from_env({"JARVIS_N_THREADS": "  "}).n_threads == default_threads()


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.from_env({"PATH": "/bin", "JARVIS_UNKNOWN": "x"}) == Settings()


@pytest.mark.parametrize("name", sorted(VALID))
def test_each_variable_parses_to_its_type(name: str) -> None:
    text, expected = VALID[name]
    settings = Settings.from_env({name: text})
    value = getattr(settings, BY_NAME[name].field)
    assert value == expected
    assert type(value) is BY_NAME[name].kind or (BY_NAME[name].kind is float
                                                  and isinstance(value, float))
    others = {v.field for v in VARIABLES} - {BY_NAME[name].field}
    assert all(getattr(settings, f) == getattr(Settings(), f) for f in others)


def test_values_are_stripped() -> None:
    assert Settings.from_env({"JARVIS_N_THREADS": " 4 \n"}).n_threads == 4


@pytest.mark.parametrize(("word", "expected"), [
    ("true", True), ("false", False), ("1", True), ("0", False), ("yes", True),
    ("no", False), ("on", True), ("off", False), ("TRUE", True), ("Off", False),
    ("Yes", True),
])
def test_boolean_words(word: str, expected: bool) -> None:
    settings = Settings.from_env({"JARVIS_ENABLE_CONTEXT_CACHE": word,
                                  "JARVIS_FLASH_ATTN": word})
    assert settings.enable_context_cache is expected
    assert settings.flash_attn is expected


@pytest.mark.parametrize("word", ["maybe", "2", "enabled", "t"])
def test_boolean_rejects_other_words(word: str) -> None:
    with pytest.raises(AutotuneError, match="JARVIS_F16_KV") as info:
        Settings.from_env({"JARVIS_F16_KV": word})
    assert "true or false" in str(info.value)


@pytest.mark.parametrize("name", sorted(VALID))
def test_non_number_text_names_the_variable(name: str) -> None:
    with pytest.raises(AutotuneError) as info:
        Settings.from_env({name: "abc"})
    message = str(info.value)
    assert name in message
    assert "'abc'" in message
    assert "\n" not in message


def test_threads_abc_says_what_was_expected() -> None:
    with pytest.raises(AutotuneError, match=r"JARVIS_N_THREADS='abc'.*whole number"):
        Settings.from_env({"JARVIS_N_THREADS": "abc"})


@pytest.mark.parametrize("text", ["2.5", "1e3", "four"])
def test_int_variable_rejects_non_integers(text: str) -> None:
    with pytest.raises(AutotuneError, match="JARVIS_MAX_CACHE_SIZE"):
        Settings.from_env({"JARVIS_MAX_CACHE_SIZE": text})


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_out_of_range_names_the_variable(name: str) -> None:
    with pytest.raises(AutotuneError) as info:
        Settings.from_env({name: OUT_OF_RANGE[name]})
    message = str(info.value)
    assert name in message
    assert "must be at" in message
    assert "\n" not in message


def test_negative_context_window() -> None:
    with pytest.raises(AutotuneError, match=r"JARVIS_MODEL_CONTEXT_WINDOW=-5.*at least 16"):
        Settings.from_env({"JARVIS_MODEL_CONTEXT_WINDOW": "-5"})


@pytest.mark.parametrize(("name", "text"), [
    ("JARVIS_TOP_P", "nan"), ("JARVIS_TOP_P", "inf"), ("JARVIS_REPEAT_PENALTY", "nan")])
def test_float_rejects_not_a_number(name: str, text: str) -> None:
    with pytest.raises(AutotuneError, match=name):
        Settings.from_env({name: text})


def test_error_names_the_source() -> None:
    with pytest.raises(AutotuneError, match=r"in my\.env"):
        Settings.from_env({"JARVIS_N_THREADS": "x"}, source="my.env")


def test_range_edges_are_accepted() -> None:
    settings = Settings.from_env({"JARVIS_N_THREADS": "1", "JARVIS_TOP_P": "1.0",
                                  "JARVIS_MODEL_CONTEXT_WINDOW": "16",
                                  "JARVIS_N_GPU_LAYERS": "-1"})
    assert (settings.n_threads, settings.top_p, settings.context_window) == (1, 1.0, 16)


def test_constructor_validates_types_and_ranges() -> None:
    with pytest.raises(AutotuneError, match="JARVIS_N_THREADS"):
        Settings(n_threads="2")  # type: ignore[arg-type]
    with pytest.raises(AutotuneError, match="JARVIS_ENABLE_CONTEXT_CACHE"):
        Settings(enable_context_cache=1)  # type: ignore[arg-type]
    with pytest.raises(AutotuneError, match="JARVIS_N_THREADS"):
        Settings(n_threads=True)
    with pytest.raises(AutotuneError, match="JARVIS_MODEL_CONTEXT_WINDOW"):
        Settings(context_window=8)
    with pytest.raises(AutotuneError, match="JARVIS_N_THREADS"):
        Settings().replace(n_threads=0)
    assert Settings(top_p=1).top_p == 1  # an int is a fine float


def test_to_env_is_strings_in_contract_order() -> None:
    env = Settings(n_threads=3, enable_context_cache=False).to_env()
    assert list(env) == [v.name for v in VARIABLES]
    assert all(isinstance(v, str) for v in env.values())
    assert env["JARVIS_N_THREADS"] == "3"
    assert env["JARVIS_ENABLE_CONTEXT_CACHE"] == "false"
    assert env["JARVIS_FLASH_ATTN"] == "true"
    assert env["JARVIS_TOP_P"] == "0.95"


def test_to_env_subset() -> None:
    env = Settings().to_env(CORE_FIELDS)
    assert list(env) == ["JARVIS_MODEL_CONTEXT_WINDOW", "JARVIS_N_THREADS",
                         "JARVIS_N_GPU_LAYERS", "JARVIS_ENABLE_CONTEXT_CACHE",
                         "JARVIS_MAX_CACHE_SIZE"]
    assert set(Settings().to_env(EXTENDED_FIELDS)) == {
        "JARVIS_N_BATCH", "JARVIS_N_UBATCH", "JARVIS_FLASH_ATTN", "JARVIS_F16_KV"}


@pytest.mark.parametrize("settings", [
    Settings(),
    Settings(context_window=512, n_threads=2, n_gpu_layers=0, enable_context_cache=False,
             max_cache_size=3, n_batch=64, n_ubatch=32, flash_attn=False, f16_kv=False,
             seed=-1, verbose=True, max_tokens=9, top_p=0.123456789, top_k=0,
             repeat_penalty=1.0),
])
def test_to_env_from_env_round_trip(settings: Settings) -> None:
    assert Settings.from_env(settings.to_env()) == settings


def test_to_dict_from_dict_round_trip() -> None:
    settings = Settings(n_threads=2, enable_context_cache=False, top_p=0.5)
    data = settings.to_dict()
    assert set(data) == {v.field for v in VARIABLES}
    assert Settings.from_dict({**data, "not_a_setting": 1}) == settings


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in VARIABLES:
        monkeypatch.delenv(var.name, raising=False)
    monkeypatch.setenv("JARVIS_N_THREADS", "5")
    assert Settings.from_env().n_threads == 5


def test_load_dotenv_file(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("# my settings\nJARVIS_N_THREADS=3\nJARVIS_ENABLE_CONTEXT_CACHE=off\n"
                    "\nJARVIS_TOP_P=0.5\nOTHER=ignored\n", encoding="utf-8")
    settings = load_env_file(path)
    assert (settings.n_threads, settings.enable_context_cache, settings.top_p) == (3, False, 0.5)
    assert settings.context_window == 4096


def test_load_export_script(tmp_path: Path) -> None:
    path = tmp_path / "jarvis.sh"
    path.write_text("#!/bin/sh\n# written by autotune\nexport JARVIS_N_THREADS='2'\n"
                    "export JARVIS_MODEL_CONTEXT_WINDOW='1024'\n"
                    "export JARVIS_ENABLE_CONTEXT_CACHE='false'\n"
                    "export JARVIS_REPEAT_PENALTY=\"1.2\"\n", encoding="utf-8")
    settings = load_env_file(path)
    assert settings.n_threads == 2
    assert settings.context_window == 1024
    assert settings.enable_context_cache is False
    assert settings.repeat_penalty == 1.2


def test_env_file_round_trip(tmp_path: Path) -> None:
    settings = Settings(n_threads=2, context_window=2048, max_cache_size=5, flash_attn=False)
    path = tmp_path / "out.sh"
    path.write_text("".join(f"export {k}='{v}'\n" for k, v in settings.to_env().items()),
                    encoding="utf-8")
    assert load_env_file(path) == settings


def test_env_file_bad_value_names_variable_and_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.env"
    path.write_text("JARVIS_N_THREADS=abc\n", encoding="utf-8")
    with pytest.raises(AutotuneError) as info:
        load_env_file(path)
    assert "JARVIS_N_THREADS" in str(info.value)
    assert str(path) in str(info.value)


def test_env_file_missing(tmp_path: Path) -> None:
    with pytest.raises(AutotuneError, match="not found"):
        load_env_file(tmp_path / "nope.env")


def test_env_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(AutotuneError, match="not found"):
        load_env_file(tmp_path)


def test_env_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "binary.env"
    path.write_bytes(b"JARVIS_N_THREADS=\xff\xfe2\n")
    with pytest.raises(AutotuneError, match="cannot read it"):
        load_env_file(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_env_file_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "secret.env"
    path.write_text("JARVIS_N_THREADS=2\n", encoding="utf-8")
    path.chmod(0)
    try:
        with pytest.raises(AutotuneError, match="cannot read it"):
            load_env_file(path)
    finally:
        path.chmod(0o600)


def test_docstring_example() -> None:
    import doctest

    from autotune.measure import settings

    result = doctest.testmod(settings)
    assert result.attempted > 0
    assert result.failed == 0
