"""The search space from the model and the machine; pins; the guide's baselines."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import make_hardware

from autotune.errors import AutotuneError
from autotune.guide import GUIDE_DEFAULTS
from autotune.measure.devices import Device
from autotune.measure.hardware import Gpu, detect
from autotune.measure.model import ModelInfo, inspect_model
from autotune.search.space import build_space, context_choices, parse_fixes


@pytest.fixture(scope="module")
def model(model_path: Path) -> ModelInfo:
    return inspect_model(model_path)


machine = make_hardware


def device(free: int) -> Device:
    """A made-up GPU of the registry, for logic that loads nothing."""
    return Device("GPU0", "test gpu", "gpu", total_bytes=free, free_bytes=free)


def sample(space, params: dict | None = None, pinned: dict | None = None):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    if params is not None:
        study.enqueue_trial(params, user_attrs={"pinned": pinned or {}})
    trial = study.ask()
    return trial, space.suggest(trial)


def test_cpu_build_fixes_gpu_layers_at_zero_and_says_why(model: ModelInfo) -> None:
    space = build_space(model, machine())
    assert space.fixed["n_gpu_layers"] == 0
    assert any("no GPU offload" in note for note in space.notes)
    trial, settings = sample(space)
    assert "n_gpu_layers" not in trial.params
    assert settings.n_gpu_layers == 0


def test_offload_device_with_room_for_every_layer_searches_zero_to_all(
        model: ModelInfo) -> None:
    space = build_space(model, machine(devices=(device(8 * 2**30),), gpu_offload=True))
    assert space.gpu_layers == (0, model.n_layers + 1)
    trial, _settings = sample(space)
    assert 0 <= trial.params["n_gpu_layers"] <= model.n_layers + 1
    # the guide's "all layers" (-1) is that many layers, inside the range
    advice, defaults = space.baselines(model, machine())
    assert advice[1]["n_gpu_layers"] == defaults[1]["n_gpu_layers"] == model.n_layers + 1


def test_offload_device_too_small_for_the_model_searches_the_layers_that_fit(
        model: ModelInfo) -> None:
    # room for a few layers beside the 1 GiB margin: the guide's "balance GPU/CPU layers"
    space = build_space(model, machine(devices=(device(2**30 + 40 * 2**20),),
                                       gpu_offload=True))
    assert space.gpu_layers is not None and 0 < space.gpu_layers[1] < model.n_layers + 1
    assert any(f"{space.gpu_layers[1]} of the model's {model.n_layers + 1} layers fit" in n
               for n in space.notes)
    advice, defaults = space.baselines(model, machine())
    assert advice[1]["n_gpu_layers"] == space.gpu_layers[1]  # advice: all that fit
    assert defaults[2]["n_gpu_layers"] == model.n_layers + 1  # the guide's: pinned, not run


def test_offload_device_without_room_fixes_layers_at_zero(model: ModelInfo) -> None:
    space = build_space(model, machine(devices=(device(2**30),), gpu_offload=True))
    assert space.fixed["n_gpu_layers"] == 0
    assert any("not one layer fits" in note for note in space.notes)


def test_offload_build_without_gpu_still_fixes_layers(model: ModelInfo) -> None:
    # llama_supports_gpu_offload() is true for an RPC build with no device at all
    space = build_space(model, machine(gpu_offload=True))
    assert space.fixed["n_gpu_layers"] == 0
    assert any("llama.cpp sees no GPU device" in note for note in space.notes)


def test_nvidia_gpu_with_a_cpu_build_says_how_to_reinstall(model: ModelInfo) -> None:
    gpu = Gpu(0, "NVIDIA L4", 24 * 2**30, 23 * 2**30)
    space = build_space(model, machine(gpus=(gpu,)))
    assert any("cannot offload, but the machine has NVIDIA L4" in note
               and "-DGGML_CUDA=on" in note for note in space.notes)


def test_threads_range_is_one_to_logical_cores(model: ModelInfo) -> None:
    space = build_space(model, machine(logical_cores=6))
    assert space.n_threads == (1, 6)


def test_context_is_powers_of_two_up_to_trained_context(model: ModelInfo) -> None:
    assert context_choices(model, machine()) == (512, 1024, 2048, 4096, 8192)


def test_context_is_capped_by_memory(model: ModelInfo) -> None:
    tight = machine(available_memory_bytes=2 * (model.size_bytes + 1024 * model.kv_bytes_per_token))
    assert context_choices(model, tight) == (512, 1024)


def test_cache_size_is_searched_only_when_the_cache_is_on(model: ModelInfo) -> None:
    space = build_space(model, machine())
    off_trial, off = sample(space, {"enable_context_cache": False})
    assert "max_cache_size" not in off_trial.params and not off.enable_context_cache
    on_trial, _on = sample(space, {"enable_context_cache": True})
    assert 1 <= on_trial.params["max_cache_size"] <= 128


def test_extended_space_adds_batch_and_attention_knobs(model: ModelInfo) -> None:
    trial, _ = sample(build_space(model, machine(), extended=True))
    assert {"n_batch", "n_ubatch", "flash_attn", "f16_kv"} <= set(trial.params)
    core_trial, _ = sample(build_space(model, machine()))
    assert not {"n_batch", "flash_attn"} & set(core_trial.params)


def test_fix_pins_a_setting_by_field_or_variable_name(model: ModelInfo) -> None:
    pinned = parse_fixes(["n_threads=3", "JARVIS_ENABLE_CONTEXT_CACHE=off"])
    assert pinned == {"n_threads": 3, "enable_context_cache": False}
    space = build_space(model, machine(), fixed=pinned)
    trial, settings = sample(space)
    assert settings.n_threads == 3 and not settings.enable_context_cache
    assert "n_threads" not in trial.params
    assert "n_threads pinned at 3" in space.notes


@pytest.mark.parametrize("text", ["n_threads", "nonsense=3", "n_threads=abc", "=4"])
def test_bad_fix_is_one_clear_error(text: str) -> None:
    with pytest.raises(AutotuneError) as err:
        parse_fixes([text])
    assert "\n" not in str(err.value)


def test_baselines_are_the_guide_defaults_and_its_size_advice(model: ModelInfo) -> None:
    space = build_space(model, machine())
    (label_b, params_b, pinned_b), (label_a, params_a, pinned_a) = space.baselines(
        model, machine())  # the advice first
    assert label_a == "guide defaults"
    assert {**params_a, **pinned_a} == {k: v for k, v in GUIDE_DEFAULTS.items()
                                        if k != "n_gpu_layers"}
    assert label_b == "guide model-size advice"
    # a 135M model is "small": larger context, more threads
    assert params_b["context_window"] == 8192 and params_b["n_threads"] == 4
    assert pinned_b == {}


def test_guide_defaults_outside_the_space_run_as_given_without_bad_params(
        model: ModelInfo) -> None:
    small = machine(logical_cores=2)
    space = build_space(model, small)
    _, params, pinned = space.baselines(model, small)[1]
    assert pinned == {"n_threads": 8} and "n_threads" not in params
    trial, settings = sample(space, params, pinned)
    assert settings.n_threads == 8 and settings.context_window == 4096
    assert "n_threads" not in trial.params  # stored parameters stay inside their ranges


def test_real_machine_space_is_built_without_error(model: ModelInfo) -> None:
    here = detect()
    space = build_space(model, here)
    assert space.n_threads == (1, here.logical_cores)
    assert space.context_choices[0] == 4096  # the default floor: the guide's window


def test_the_default_floor_is_the_guides_window_and_can_be_lowered(model: ModelInfo) -> None:
    assert build_space(model, machine()).context_choices == (4096, 8192)
    assert build_space(model, machine(), min_context=512).context_choices == (
        512, 1024, 2048, 4096, 8192)
    assert build_space(model, machine(), min_context=3000).context_choices == (3000, 4096, 8192)


def test_a_floor_the_memory_cannot_hold_is_lowered_and_said_so(model: ModelInfo) -> None:
    tight = machine(available_memory_bytes=2 * (model.size_bytes + 1024 * model.kv_bytes_per_token))
    space = build_space(model, tight)
    assert space.context_choices == (1024,) and space.min_context == 1024
    assert any("floor 4096 lowered to 1024" in note and "memory" in note for note in space.notes)
    assert space.describe().min_context == 1024


@pytest.mark.parametrize("floor", [512, 4096, 8192, 65536])
def test_the_baselines_lie_inside_the_space_at_or_above_its_floor(model: ModelInfo,
                                                                  floor: int) -> None:
    space = build_space(model, machine(), min_context=floor)
    for _label, params, _pinned in space.baselines(model, machine()):
        assert params["context_window"] in space.context_choices
        assert params["context_window"] >= space.min_context


def test_a_window_pinned_below_the_floor_is_refused_until_the_floor_is_lowered(
        model: ModelInfo) -> None:
    machine = make_hardware()
    with pytest.raises(AutotuneError, match="below the context window's floor 4096"):
        build_space(model, machine, fixed={"context_window": 1024})
    space = build_space(model, machine, fixed={"context_window": 1024}, min_context=1024)
    assert space.fixed["context_window"] == 1024
