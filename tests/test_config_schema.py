"""Every config key of every command is checked: the schema covers the shipped configs, and a fuzz test sets
each leaf key to a value of the wrong type and, for numbers, just out of range, through the real entry point."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from diffusion_lab.cli import app
from diffusion_lab.config import CONF_DIR
from diffusion_lab.config_schema import (
    SCHEMAS,
    ConfigError,
    Rule,
    check_config,
    is_interpolation,
    leaf_keys,
    rule_for,
)  # fmt: skip
from tests.helpers import compose_hydra, main_in_process, one_error_line

FIXTURE_CKPT = Path(__file__).parent / "fixtures" / "tiny_styled_v0.1.ckpt"
#: The command line each command's fuzz cases start from.
BASE = {"train": ("experiment=smoke",), "sample": (f"ckpt={FIXTURE_CKPT}",), "evaluate": (f"ckpt={FIXTURE_CKPT}",),
        "figures": (), "export": (f"ckpt={FIXTURE_CKPT}",)}  # fmt: skip
#: The config groups each command composes, whose every option's keys the schema must cover.
GROUPS = {
    "train": ("data", "model", "model/lr_scheduler", "schedule", "sampler", "trainer", "logger", "clip", "debug",
              "hparams_search"),
    "sample": ("sampler", "clip"),
    "evaluate": ("sampler", "clip"),
    "figures": ("data", "sampler"),
    "export": (),
}  # fmt: skip


def variants(command: str) -> Iterator[tuple[str, ...]]:
    """The base command line, then one more override for each group option and each of the command's experiments."""
    yield BASE[command]
    for group in GROUPS[command]:
        for option in sorted((CONF_DIR / group).glob("*.yaml")):
            yield (*BASE[command], f"{group}={option.stem}")
    for experiment in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        if OmegaConf.load(experiment).get("task_name") == command:
            yield (*[o for o in BASE[command] if not o.startswith("experiment=")], f"experiment={experiment.stem}")


@cache
def composed(command: str, overrides: tuple[str, ...]) -> DictConfig:
    """The command's config with ``overrides``, composed once per process (read-only: the tests share it)."""
    cfg = compose_hydra(*overrides, config_name=command)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def config_leaves(command: str, overrides: tuple[str, ...]) -> dict[str, Any]:
    """The leaf keys of the composed config (no ``hydra`` node) and their values, unresolved."""
    cfg = composed(command, overrides)
    return {
        key: OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        if not is_interpolation(cfg, key) else None
        for key in leaf_keys(cfg) if not key.startswith("hydra")
    }  # fmt: skip


def _override(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, str) else str(value)


def wrong_type_values(default: Any, rule: Rule) -> list[Any]:
    """Values of a type the key does not take, chosen from the type of its shipped value."""
    if isinstance(default, bool):
        return ["maybe"] if rule.test(2) else ["maybe", 2]  # trainer.fast_dev_run also takes a batch count
    if isinstance(default, (int, float)):
        return ["abc", 1.5] if rule.integer and not rule.test(1.5) else ["abc"]
    if isinstance(default, list):
        return ["abc"]
    return [{"a": 1}]  # a string, a path, a null: a mapping is none of those


def out_of_range_values(rule: Rule) -> list[Any]:
    """The values just outside a number's range."""
    step = 1 if rule.integer else 0.5
    values = []
    if rule.low is not None:
        values.append(rule.low if rule.open_low else rule.low - step)
    if rule.high is not None:
        values.append(rule.high if rule.open_high else rule.high + step)
    return values


def fuzz_cases() -> list[tuple[str, tuple[str, ...], str, Any]]:
    """(command, base overrides, key, bad value) for every leaf key of every command and group option."""
    cases, seen = [], set()
    for command in SCHEMAS:
        for overrides in variants(command):
            for key, default in config_leaves(command, overrides).items():
                if (command, key) in seen or (rule := rule_for(command, key)) is None:
                    continue
                seen.add((command, key))
                bad = wrong_type_values(default, rule)
                if (isinstance(default, (int, float)) and not isinstance(default, bool)) or rule.low is not None:
                    bad += out_of_range_values(rule)
                cases += [(command, overrides, key, value) for value in bad]
    return cases


FUZZ_CASES = fuzz_cases()


@pytest.mark.parametrize("command", sorted(SCHEMAS))
def test_every_key_of_every_shipped_config_has_a_rule_and_the_shipped_values_pass(command: str) -> None:
    for overrides in variants(command):
        cfg = composed(command, overrides)
        uncovered = [key for key in leaf_keys(cfg) if not key.startswith("hydra") and rule_for(command, key) is None]
        assert uncovered == [], (overrides, uncovered)
        try:
            check_config(cfg, command, stage="before_run")
        except ConfigError as err:  # trainer=gpu and trainer=ddp on a machine without one
            assert not torch.cuda.is_available() and all("no GPU is visible" in line for line in err.lines), err


def test_every_number_has_a_range_and_every_rule_an_example_that_passes() -> None:
    for command, schema in SCHEMAS.items():
        for key, rule in schema.items():
            if rule.integer or rule.low is not None or rule.high is not None:
                assert rule.low is not None or rule.high is not None, (command, key)
            assert rule.test(rule.example) or (isinstance(rule.example, str) and rule.example.startswith("${")), key


def test_the_fuzz_walks_every_key() -> None:
    keys = {(command, key) for command, _, key, _ in FUZZ_CASES}
    for command in SCHEMAS:
        shipped = {key for key in config_leaves(command, BASE[command]) if rule_for(command, key) is not None}
        assert shipped <= {key for c, key in keys if c == command}
    assert len(FUZZ_CASES) > 400


@pytest.mark.slow  # 513 cases, a minute in all
@pytest.mark.parametrize(
    ("command", "overrides", "key", "value"),
    FUZZ_CASES,
    ids=[f"{c}-{k}={_override(v)}" for c, _, k, v in FUZZ_CASES],
)
def test_a_bad_value_of_any_key_is_one_line_that_names_it_and_writes_nothing(
    command: str, overrides: tuple[str, ...], key: str, value: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"

    def not_past_the_precheck(cfg: DictConfig, name: str, stage: str = "all") -> None:
        if stage != "before_run":
            pytest.fail(f"{key}={value!r} reached the run: the check before Hydra starts let it through")
        check_config(cfg, name, stage=stage)

    monkeypatch.setattr(app, "check_config", not_past_the_precheck)
    with pytest.raises(SystemExit) as exit_info:
        main_in_process(monkeypatch, command, *overrides, f"{key}={_override(value)}", f"hydra.run.dir={run_dir}")
    assert exit_info.value.code != 0
    line = one_error_line(capsys.readouterr().err)
    assert key.split(".")[-1] in line, line
    assert list(tmp_path.iterdir()) == [], "a refused command wrote something"


def test_a_run_checks_each_value_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The values as given before Hydra makes the run folder, the interpolated ones (``output``) inside the run."""
    stages = []

    def recorded(cfg: DictConfig, name: str, stage: str = "all") -> None:
        stages.append(stage)
        check_config(cfg, name, stage=stage)

    monkeypatch.setattr(app, "check_config", recorded)
    main_in_process(monkeypatch, "sample", f"ckpt={FIXTURE_CKPT}", "label=7", "num_samples=1", "steps=2",
                    "clip=none", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert stages == ["before_run", "in_run"]
    assert (tmp_path / "run" / "samples.png").is_file()


def test_a_value_known_only_in_the_run_is_checked_there(compose_train) -> None:
    cfg = compose_train("data.batch_size=${seed}", "seed=0")  # an interpolation: left for the run
    check_config(cfg, "train", stage="before_run")
    with pytest.raises(ConfigError) as err:
        check_config(cfg, "train", stage="in_run")
    assert err.value.lines == ["data.batch_size must be a positive integer, got 0 (e.g. data.batch_size=128)"]


def test_several_bad_values_are_one_line_each(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main_in_process(monkeypatch, "train", "seed=abc", "data.batch_size=0", f"hydra.run.dir={tmp_path / 'run'}")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert lines == [
        "error: seed must be an integer in [0, 4294967295], got 'abc' (e.g. seed=0)",
        "error: data.batch_size must be a positive integer, got 0 (e.g. data.batch_size=128)",
    ]


def test_a_value_through_an_interpolation_is_checked_after_it_resolves(compose_train) -> None:
    cfg = compose_train("diffusion.timesteps=0")  # schedule.timesteps is ${diffusion.timesteps}
    with pytest.raises(ConfigError) as err:
        check_config(cfg, "train")
    assert err.value.lines == ["diffusion.timesteps must be a positive integer, got 0 (e.g. diffusion.timesteps=1000)"]


def test_a_key_a_user_adds_is_left_to_the_component_it_configures(compose_train) -> None:
    check_config(compose_train("+trainer.benchmark=true"), "train")


def test_a_callback_a_user_adds_may_take_arguments(compose_train) -> None:
    cfg = compose_train("+callbacks.timer={_target_:lightning.pytorch.callbacks.Timer,duration:null}")
    check_config(cfg, "train")
    assert rule_for("train", "callbacks.timer.duration") is None  # a pattern's * stands for one key only


@pytest.mark.parametrize(
    ("args", "message"),
    [(("",), "SWEEP_DIR is empty"),
     (("MISSING",), "sweep folder not found"),
     (("FILE",), "sweep folder not found"),
     (("SWEEP", "--output", ""), "--output is empty"),
     (("SWEEP", "--output", "/proc/nope/x"), "--output=/proc/nope/x cannot be written"),
     (("SWEEP", "--output", "FILE/x"), "--output=FILE/x cannot be written (FILE is a file)")],
)  # fmt: skip
def test_a_bad_report_argument_is_one_line_and_writes_nothing(
    args: tuple[str, ...], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # fmt: skip
    """diffusion-lab-report takes plain arguments, all paths: each bad one is one line, and nothing is written."""
    from diffusion_lab.cli import report

    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("a file")
    (tmp_path / "SWEEP").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        report.main(list(args))
    assert exit_info.value.code == 1
    assert message in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["FILE", "SWEEP"]
