"""The exceptions users see and the exit code of each: one line that says what is wrong and
what to do, never a traceback.

Exit codes of `icp` (README "Exit codes", docs/reliability.md):

- 0: done; 1: `icp check` found broken invariants (or an app job failed);
- 2: usage error or bad input (an unknown option, a bad value, a file that is not a corpus);
- 3: the workspace is busy (another process holds its write lock);
- 4: the workspace is damaged (truncated, corrupt blocks); restore it from a copy or re-run;
- 5: no space to write (disk full, file size limit); nothing half-written is kept;
- 70: an internal error, i.e. a bug (`ICP_DEBUG=1` shows the traceback);
- 130 / 143: interrupted by Ctrl-C / SIGTERM; finished work is kept, re-run to resume.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    PROBLEMS = 1
    USAGE = 2
    BUSY = 3
    DAMAGED = 4
    NO_SPACE = 5
    INTERNAL = 70
    INTERRUPTED = 130
    TERMINATED = 143


def option_flag(name: str) -> str:
    """The command line's option for a `Params` field or option name: `text_field` ->
    `--text-field`."""
    return "--" + name.replace("_", "-")


class IcpError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback.

    Args:
        message: what is wrong and what to do; where it names the setting that fixes the
            problem it says "{fix}" instead.
        fix: that setting, as a `Params` field or option name (`text_field`, `overwrite`).
            The command line shows it as its flag (`str(err)`: `--text-field`), the app as
            its control's label (`render`), so the engine's words suit both.
    """

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(self.render(option_flag))

    def render(self, name_of: Callable[[str], str]) -> str:
        """The message with the fix named by `name_of(fix)`."""
        return render(self.message, self.fix, name_of)


def render(message: str, fix: str | None, name_of: Callable[[str], str] = option_flag) -> str:
    """`message` with "{fix}" replaced by `name_of(fix)` (by default the command line's flag)."""
    return message if fix is None else message.replace("{fix}", name_of(fix))


class WorkspaceBusy(IcpError):
    """Another process holds the workspace's write lock."""

    exit_code = ExitCode.BUSY


class WorkspaceDamaged(IcpError):
    """The workspace file cannot be read back: truncated, or blocks whose checksums fail."""

    exit_code = ExitCode.DAMAGED


class NoSpace(IcpError):
    """A write failed for lack of space (ENOSPC, EDQUOT) or a file size limit (EFBIG)."""

    exit_code = ExitCode.NO_SPACE
