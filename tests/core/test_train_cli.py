"""`python -m indigo_core.train KIND --help`: every option states its real default exactly once,
the preset's values for the options a preset fills."""

from __future__ import annotations

import re

import pytest

from indigo_core.train import run
from indigo_core.train.cli import KINDS, _task_module

OPTIMISER_DEFAULTS = {"--beta1": "0.9", "--beta2": "0.999", "--warmup-steps": "0", "--min-lr-ratio": "0.1"}
REQUIRED = {"--data", "--out", "--vae"}


def _help_text(kind: str, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        run([kind, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def _option_helps(text: str) -> dict[str, str]:
    """{long option: its help text on one line} from argparse's layout: an entry starts at a line
    indented by two spaces and a dash; its help follows on the same line after two or more spaces
    and/or on the deeper-indented lines below it."""
    body = text[text.index("\noptions:"):]
    entries: dict[str, list[str]] = {}
    current = None
    for line in body.splitlines():
        if re.match(r"^  -", line):
            invocation, _, rest = line.strip().partition("  ")
            names = [w.rstrip(",") for w in invocation.split() if w.startswith("-")]
            current = next((n for n in names if n.startswith("--")), names[0])
            entries[current] = [rest.strip()] if rest.strip() else []
        elif line.startswith("    ") and current is not None:
            entries[current].append(line.strip())
        else:
            current = None
    helps = {}
    for name, parts in entries.items():
        joined = ""
        for part in parts:  # textwrap breaks after hyphens ("--val-" / "fraction"): rejoin those
            joined += part if joined.endswith("-") and not joined.endswith(" -") else (" " + part if joined else part)
        helps[name] = joined
    return helps


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@pytest.mark.parametrize("kind", KINDS)
def test_help_states_every_default_once(kind, capsys):
    text = _help_text(kind, capsys)
    helps = _option_helps(text)
    mod = _task_module(kind)
    assert {"--crop", "--steps", "--batch-size", "--lr", *OPTIMISER_DEFAULTS} <= set(helps), sorted(helps)

    assert "(default: None)" not in text
    for name, help_ in helps.items():
        if name == "--help" or name in REQUIRED:
            continue
        assert len(re.findall("default", help_, flags=re.I)) == 1, f"{kind} {name}: {help_!r}"

    # options the preset fills say so and name each preset's value
    filled = {key for preset in mod.PRESETS.values() for key in preset}
    for key in filled:
        name = "--" + key.replace("_", "-")
        assert "default from --preset" in helps[name], f"{kind} {name}: {helps[name]!r}"
        for preset_name, preset in mod.PRESETS.items():
            assert preset_name in helps[name], f"{kind} {name}: {helps[name]!r}"
            if key in ("crop", "steps", "batch_size", "lr"):
                assert f"{_fmt(preset[key])} for {preset_name}" in helps[name], f"{kind} {name}: {helps[name]!r}"

    for name, value in OPTIMISER_DEFAULTS.items():
        assert helps[name].endswith(f"(default: {value})"), f"{kind} {name}: {helps[name]!r}"


@pytest.mark.parametrize("flag, value, expected", [
    ("--scale", "0", "an integer >= 1"),  # was read as "the default" and trained x4
    ("--threads", "-1", "an integer >= 0"),  # was ignored
    ("--workers", "-5", ">= -1"),  # was taken as "auto"
    ("--log-every", "0", ">= 1"),
    ("--ckpt-every", "-1", ">= 0"),  # the message named four flags and no value
])
def test_out_of_range_integers_are_refused_by_name_before_any_work(flag, value, expected, tmp_path):
    from indigo_core.errors import TrainingError

    out = tmp_path / "out"
    argv = ["restorer", "--data", str(tmp_path / "none"), "--out", str(out), "--steps", "1", flag, value]
    with pytest.raises(TrainingError, match=rf"^{flag}: expected {re.escape(expected)}, got {value}$"):
        run(argv)
    assert not out.exists()
