"""Detached service processes: starting them, telling whether they still run, stopping them.

Each service runs in a session of its own (`setsid`), with stdin closed and stdout and stderr
in its log file, so it outlives the `actctl up` that started it and ignores that terminal's ^C.
Its pid is also its session id, which marks every process it starts in turn: `stop_session`
finds those through /proc and leaves none behind.

A pid alone does not identify a process once it has exited (the kernel reuses pids), so each
service is recorded with its start time (`/proc/<pid>/stat`, field 22, clock ticks since boot)
and nothing is signalled whose start time differs. A zombie (exited, not yet reaped by its
parent) counts as stopped. Without /proc (not Linux), liveness falls back to `kill(pid, 0)`
and the sweep to the process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PROC = Path("/proc")
# Field positions in /proc/<pid>/stat after the ")" that ends the command name (field 2):
# state is field 3, session field 6, starttime field 22.
_STATE, _SESSION, _START = 0, 3, 19

StopOutcome = Literal["not running", "stopped", "killed"]


@dataclass(frozen=True)
class Started:
    pid: int
    start_ticks: int | None


@dataclass(frozen=True)
class Stopped:
    """How a session ended: the leader's outcome and the other processes killed with it."""

    outcome: StopOutcome
    leftovers_killed: tuple[int, ...] = ()


def start_detached(
    command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> Started:
    """Starts `command` in a new session, output to `log_path` (replaced), no stdin."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )
    return Started(process.pid, start_ticks(process.pid))


def _stat(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    return text[text.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None without /proc or process."""
    fields = _stat(pid)
    return int(fields[_START]) if fields is not None else None


def _reap(pid: int) -> None:
    """Collects the exit status when the process is our own child (else it stays a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def is_alive(pid: int, ticks: int | None) -> bool:
    """True while the process `pid` that started at `ticks` runs (zombies do not)."""
    _reap(pid)
    if not PROC.is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _stat(pid)
    if fields is None or fields[_STATE] == "Z":
        return False
    return ticks is None or int(fields[_START]) == ticks


def session_members(session: int) -> list[int]:
    """Live processes of the session `session` (empty without /proc)."""
    if not PROC.is_dir():
        return []
    members = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None and fields[_STATE] != "Z" and int(fields[_SESSION]) == session:
            members.append(int(entry.name))
    return sorted(members)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pids: Sequence[int], ticks: Mapping[int, int | None], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(is_alive(pid, ticks.get(pid)) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _ours(pid: int, ticks: int | None) -> bool:
    """False when another process holds the pid now (so its session id is not ours)."""
    fields = _stat(pid)
    return ticks is None or fields is None or int(fields[_START]) == ticks


def stop_sessions(leaders: Sequence[tuple[int, int | None]], timeout: float) -> list[Stopped]:
    """Stops several sessions at once: SIGTERM to each leader (pid, start ticks), up to
    `timeout` seconds for them to exit, then SIGKILL to those left and to every process that
    remains in their sessions. One `Stopped` per leader, in order."""
    ticks = dict(leaders)
    running = [pid for pid, tick in leaders if is_alive(pid, tick)]
    for pid in running:
        _signal(pid, signal.SIGTERM)
    _wait_gone(running, ticks, timeout)
    stubborn = [pid for pid in running if is_alive(pid, ticks[pid])]
    for pid in stubborn:
        _signal(pid, signal.SIGKILL)
    _wait_gone(stubborn, ticks, 5.0)
    results = []
    for pid, tick in leaders:
        outcome: StopOutcome = (
            "killed" if pid in stubborn else "stopped" if pid in running else "not running"
        )
        results.append(Stopped(outcome, _sweep(pid) if _ours(pid, tick) else ()))
    return results


def _sweep(session: int) -> tuple[int, ...]:
    """SIGKILL to every process left in the session (its leader has exited)."""
    if not PROC.is_dir():
        try:
            os.killpg(session, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return ()
    leftovers = session_members(session)
    start = {member: start_ticks(member) for member in leftovers}
    for member in leftovers:
        _signal(member, signal.SIGKILL)
    _wait_gone(leftovers, start, 5.0)
    return tuple(leftovers)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file ("" when it is missing)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
