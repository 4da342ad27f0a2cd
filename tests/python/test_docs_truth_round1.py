"""Do the docs tell the truth (outside probe, round one): claims of docs/training.md, docs/gpu.md and
docs/dataset.md that are cheap to keep true automatically, checked against the code and the files
the docs cite.

- docs/training.md's "Commands" table lists every option of each command it shows (a missing
  `--overwrite` was how `dodo synth` and `dodo export` read there), and a value it writes for an
  option (`[--sizes 500,1000,all]`, `[--bootstrap 10000]`) is that option's default;
- the defaults the prose quotes (loss weights, the two filter limits, `training.amp`) are the
  config's;
- the two study tables of docs/training.md (the 38,935-state learning curve, targeted sampling)
  hold the numbers of the JSON files in training/studies that they were printed from;
- docs/dataset.md's "a next extension starts at ..." follows data/qke/campaign_plan.txt.

Fast (well under a second of work), no torch (PyYAML for the config classes), no network.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAINING_MD = ROOT / "docs" / "training.md"


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _cells(row: str) -> list[str]:
    """The cells of a markdown table row (escaped pipes `\\|` stay inside their cell)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip().strip("|"))]


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else len(text)]


def _parser_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options of a command, those of its own subcommands included (dodo plot metrics|curve)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_parser_actions(sub))
        elif action.option_strings and not isinstance(action, argparse._HelpAction) \
                and action.help != argparse.SUPPRESS:
            found.append(action)
    return found


def _commands_table_rows():
    """(command, first cell) of each row of training.md's "## Commands" table."""
    rows = []
    for line in _section(_read(TRAINING_MD), "## Commands").splitlines():
        if line.startswith("| `dodo "):
            first = _cells(line)[0]
            rows.append((first.split()[1].rstrip("`"), first))
    assert len(rows) >= 12, "the Commands table of docs/training.md was not found"
    return rows


def _subcommands():
    from dodo.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_training_commands_table_lists_every_option():
    names = _subcommands()
    missing = []
    for command, cell in _commands_table_rows():
        assert command in names, f"docs/training.md's Commands table shows `dodo {command}`, not a command"
        written = set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", " ".join(re.findall(r"`([^`]*)`", cell))))
        for action in _parser_actions(names[command]):
            if not written & set(action.option_strings):
                missing.append(f"dodo {command} {'/'.join(action.option_strings)}")
    assert not missing, f"options of the commands that docs/training.md's Commands table leaves out: {missing}"


_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")


def test_training_commands_table_values_are_the_defaults():
    names = _subcommands()
    checked, wrong = 0, []
    for command, cell in _commands_table_rows():
        usage = re.search(r"`(dodo [^`]*)`", cell).group(1)
        options = {o: a for a in _parser_actions(names[command]) for o in a.option_strings}
        for group in re.findall(r"\[([^\[\]]*)\]", usage):
            for option, value in re.findall(r"(--[a-z][a-z0-9-]*) ([^\s\[\]]+)", group):
                if value.startswith("-") or _PLACEHOLDER.match(value) or "\\" in value or "|" in value:
                    continue  # a placeholder (N, PATH) or a list of choices, not a value
                default = options[option].default
                if default is None:
                    continue  # computed where it is used (inspect --split: val of the training file)
                if isinstance(default, (int, float)) and not isinstance(default, bool):
                    same = float(value) == float(default)
                else:
                    same = str(default) == value
                checked += 1
                if not same:
                    wrong.append(f"dodo {command} {option} {value} (the default is {default!r})")
    assert checked >= 7, "no value of the Commands table was compared: has its form changed?"
    assert not wrong, f"docs/training.md's Commands table writes values that are not the defaults: {wrong}"


def test_quoted_config_defaults_are_the_code_defaults():
    pytest.importorskip("yaml")
    from dodo.training.config import FiltersConfig, LossConfig, TrainingConfig

    text = _read(TRAINING_MD)
    weights = re.search(r"`residual_l1` \(L1 of\s+all 24 numbers\)\. Defaults: ([0-9., ]+)\.", text)
    assert weights, "docs/training.md no longer quotes the loss weights' defaults where this test looks"
    quoted = [float(x) for x in weights.group(1).split(",")]
    loss = LossConfig()
    assert quoted == [loss.w_density, loss.w_flux, loss.w_direction, loss.w_unphysical, loss.w_residual_l1]
    filters = FiltersConfig()
    tolerance = re.search(r"`conservation_tolerance` = ([0-9.e-]+) N_tot", text)
    limit = re.search(r"`max_flux_factor` = ([0-9.]+);", text)
    assert tolerance and limit
    assert float(tolerance.group(1)) == filters.conservation_tolerance
    assert float(limit.group(1)) == filters.max_flux_factor
    amp = re.search(r"`training\.amp` \(default `(true|false)`", _read(ROOT / "docs" / "gpu.md"))
    assert amp, "docs/gpu.md no longer says what training.amp defaults to"
    assert (amp.group(1) == "true") == TrainingConfig().amp


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("*", "").strip())


def _close(printed: str, value: float) -> bool:
    """Whether ``value`` rounds to ``printed`` (as many decimals as printed)."""
    printed = printed.replace("*", "").strip()
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return abs(_number(printed) - value) <= 0.5 * 10.0 ** -decimals + 1e-12


def _table_after(text: str, marker: str) -> list[list[str]]:
    """The body rows of the first markdown table after ``marker``."""
    lines = text[text.index(marker):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(_cells(line))
    return rows


def test_learning_curve_table_matches_its_json():
    text = _read(TRAINING_MD)
    source = "training/studies/learning_curve_38935.json"
    assert f"--json {source}" in text, "the table's command no longer names its JSON file"
    report = json.loads(_read(ROOT / source))
    rows_of_json = report["rows"] if isinstance(report, dict) else report  # a bare list before 2026-12-04
    by_size = {row["train_size"]: row for row in rows_of_json}
    rows = _table_after(text, "**Learning curve on the 38,935-state pool**")
    assert [int(_number(r[0].split("(")[0])) for r in rows] == sorted(by_size), "sizes differ from the JSON's"
    for cells in rows:
        row = by_size[int(_number(cells[0].split("(")[0]))]
        mean, low, high = re.match(r"([0-9.]+) \[([0-9.]+), ([0-9.]+)\]", cells[1]).groups()
        worse, share = re.match(r"([0-9,]+) \(([0-9.]+)%\)", cells[3]).groups()
        pairs = [(mean, row["cv_model"]), (low, row["cv_model_ci95"][0]), (high, row["cv_model_ci95"][1]),
                 (cells[2], row["cv_box3d"]), (worse, row["cv_worse_than_box3d"]),
                 (share, 100 * row["cv_worse_than_box3d"] / row["cv_states"]),
                 (cells[4].rstrip("%"), 100 * row["cv_growth_within_10pct"]),
                 (cells[5], row["emu_model_mean_over_folds"]),
                 (cells[6].rstrip("%"), 100 * row["emu_growth_within_10pct"])]
        bad = [(printed, value) for printed, value in pairs if not _close(printed, value)]
        assert not bad, f"learning-curve row {cells[0]}: printed vs JSON {bad}"


_ARMS = {"random": ("family", "random"), "random, second draw": ("family", "random-2"),
         "top sigma, any family": ("global", "top-sigma"),
         "sigma-proportional, any family": ("global", "prop-sigma"),
         "top sigma within each family": ("family", "family-top-sigma"),
         "sigma-proportional within each family": ("family", "family-prop-sigma")}


def test_targeted_sampling_table_matches_its_json():
    text = _read(TRAINING_MD)
    rows = _table_after(text, "**Targeted sampling: labels where the ensemble disagrees**")
    studies = {}
    base = None
    checked = 0
    for cells in rows:
        if cells[0]:
            base = int(_number(cells[0].split("+")[0]))
        arm = cells[1].replace("*", "").strip()
        if arm == "base alone":
            fit = json.loads(_read(ROOT / f"training/studies/targeted_sampling_b{base}_family.json"))["base_fit"]
            pairs = [(cells[2], fit["gated"]), (cells[3], fit["gated_emu"]), (cells[5], fit["worse"])]
        else:
            kind, key = _ARMS[arm]
            if (base, kind) not in studies:
                path = ROOT / f"training/studies/targeted_sampling_b{base}_{kind}.json"
                studies[base, kind] = json.loads(_read(path))
            result = studies[base, kind]["arms"][key]
            worse, worse_emu = re.match(r"\**([0-9,]+)\** \(([0-9,]+)\)", cells[5]).groups()
            pairs = [(cells[2], result["gated"]), (cells[3], result["gated_emu"]),
                     (worse, result["worse"]), (worse_emu, result["worse_emu"])]
            if cells[4]:
                low, high = re.match(r"\[([-+0-9.]+), ([-+0-9.]+)\]", cells[4]).groups()
                pairs += [(low, result["minus_random_emu_ci"][0]), (high, result["minus_random_emu_ci"][1])]
            added = result["added_families"]
            if cells[6] == "as random":
                assert added == studies[base, kind]["arms"]["random"]["added_families"], (base, arm)
            else:
                counts = [_number(x) for x in cells[6].split("/")]
                assert counts == [added["emu"], added["merger"], added["three_flavour"]], (base, arm, added)
        bad = [(printed, value) for printed, value in pairs if not _close(printed, value)]
        assert not bad, f"targeted-sampling row {base} {arm}: printed vs JSON {bad}"
        checked += 1
    assert checked == 16, f"expected the table's 16 rows, read {checked}"


def test_dataset_card_next_extension_follows_the_plan():
    plan = ROOT / "data" / "qke" / "campaign_plan.txt"
    if not plan.exists():
        pytest.skip("no data/qke/campaign_plan.txt in this checkout")
    said = re.search(r"a next extension starts at emu (\d+), merger (\d+), three_flavour (\d+)",
                     re.sub(r"\s+", " ", _read(ROOT / "docs" / "dataset.md")))
    assert said, "docs/dataset.md no longer says where the next extension of the plan starts"
    last = {}
    for line in _read(plan).splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            last[fields[0]] = max(last.get(fields[0], 0), int(fields[1]))
    expected = (last["emu"] + 1, last["merger"] + 1, last["three_flavour"] + 1)
    assert tuple(int(x) for x in said.groups()) == expected, (
        f"docs/dataset.md says the next extension starts at {said.groups()}, the plan's last seeds make it "
        f"{expected}: list the plan's newest extension there")
