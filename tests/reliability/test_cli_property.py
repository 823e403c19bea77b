"""Random option values and random command sequences on a small workspace: every command
ends with a documented exit code (0 done, 2 refused, never an internal error), and the
workspace still checks and exports afterwards. Most runs are in-process (fast); a few go
through a subprocess, as a user's shell would."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from icp_core.errors import ExitCode
from tests.reliability.cli_runner import Result, icp, icp_here, no_bug

ALLOWED = {ExitCode.OK, ExitCode.USAGE}

INTS = st.one_of(
    st.integers(-3, 40),
    st.integers(-(2**40), 2**40),
    st.sampled_from([0, 1, 1024, 1025, 2**20, 2**20 + 1, 2**31, 2**32 - 1, 2**32]),
)
FLOATS = st.one_of(st.floats(0.5, 1.0), st.floats(allow_nan=True, allow_infinity=True))
# option values as a shell passes them: any text but NUL (which argv cannot carry)
TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=8)


def choice(*valid: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(valid), TEXT)


def option(flag: str, values: st.SearchStrategy) -> st.SearchStrategy[list[str]]:
    """`[flag, value]`, or nothing (the option not given)."""
    return st.one_of(st.just([]), values.map(lambda v: [flag, str(v)]))


def command(name: str, *options: st.SearchStrategy[list[str]]) -> st.SearchStrategy[list[str]]:
    return st.tuples(*options).map(lambda parts: [name, *itertools.chain(*parts)])


COMMANDS = st.one_of(
    command("knn", option("--k", INTS), option("--index", choice("auto", "flat", "ivf", "hnsw"))),
    command(
        "dedup",
        option("--dedup-threshold", FLOATS),
        st.sampled_from([[], ["--no-dedup"]]),
    ),
    command(
        "order",
        option("--order", choice("greedy-lk", "greedy", "icp", "original", "random")),
        option("--seed", INTS),
    ),
    command(
        "pack",
        option("--context-length", st.one_of(st.integers(2, 600), INTS)),
        option("--pack", choice("split", "whole")),
        st.sampled_from([[], ["--shuffle"], ["--no-shuffle"]]),
        option("--seed", INTS),
    ),
    command("embed", option("--batch-size", INTS), option("--max-tokens", INTS)),
    command("metrics", st.sampled_from([[], ["--json"]]), option("--label-field", TEXT)),
    command("check", st.sampled_from([[], ["--deep"]])),
)
# `icp check` on a workspace left half-updated by a stage command reports the stale stage (1)
ALLOWED_CHECK = ALLOWED | {ExitCode.PROBLEMS}


def still_works(run, workspace: Path, out: Path) -> None:
    """The workspace exports after whatever came before, and then (every stage brought up to
    date by the export) passes `icp check --deep`."""
    exported = run("export", "-w", workspace, "--out", out, "--format", "jsonl", "--overwrite")
    assert exported.returncode == ExitCode.OK, exported.stderr
    checked = run("check", "--deep", "-w", workspace)
    assert checked.returncode == ExitCode.OK, checked.stderr


def run_sequence(run, workspace: Path, sequence: list[list[str]]) -> None:
    for args in sequence:
        result: Result = run(*args, "-w", workspace)
        no_bug(result)
        allowed = ALLOWED_CHECK if args[0] == "check" else ALLOWED
        assert result.returncode in allowed, (args, result.returncode, result.stderr)
        if result.returncode == ExitCode.PROBLEMS:
            assert "is out of date" in result.stderr, result.stderr
        if result.returncode == ExitCode.USAGE:
            assert result.stderr.strip(), args  # a refusal always says why


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("property")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=st.lists(COMMANDS, min_size=1, max_size=4))
# found by this test: a label field name that is JSON-path syntax reached DuckDB unquoted
@example(sequence=[["metrics", "--label-field", "["]])
def test_random_commands_in_process(tiny_workspace_template, scratch, sequence):
    workspace = scratch / "w.duckdb"
    shutil.copyfile(tiny_workspace_template, workspace)
    run_sequence(icp_here, workspace, sequence)
    still_works(icp_here, workspace, scratch / "out")


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=st.lists(COMMANDS, min_size=1, max_size=2))
def test_random_commands_in_a_subprocess(tiny_workspace_template, scratch, sequence):
    workspace = scratch / "s.duckdb"
    shutil.copyfile(tiny_workspace_template, workspace)
    run_sequence(icp, workspace, sequence)
    still_works(icp, workspace, scratch / "out-s")
