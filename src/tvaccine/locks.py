"""Lock files, so that several workers of one sweep (processes, or machines sharing a file system) never compute the
same stage at once, and a stage left by a crashed worker is taken over by another.

Why a file created with ``O_CREAT | O_EXCL`` and not ``flock``/``fcntl``: those are advisory locks that NFS and
other shared file systems either lack or implement loosely, and a lock held by a dead machine is never freed.
Exclusive creation is atomic on a local file system and on NFSv3 and later; ``rename`` and ``link`` are atomic too.

- **Format.** ``<name>.lock`` beside what it guards, holding one JSON object: the owner's ``host``, ``pid``, a random
  ``token`` and ``since`` (Unix time it was taken). The file's modification time is the heartbeat: the owner's
  background thread refreshes it (``os.utime``) every ``heartbeat_s``. A refresh rewrites nothing, so it can never
  recreate a lock that another worker has just broken.
- **Waiting.** A worker that finds the lock held polls it every ``poll_s`` until it is gone, then takes it.
- **Stale.** A lock whose heartbeat is older than ``stale_after_s`` (default 300 s; a heartbeat is due every tenth of
  that) belongs to a worker that died or lost the file system. The waiting worker renames it to a unique name (one
  of several such workers wins the rename), checks that the renamed file is the one it judged stale (same inode,
  same heartbeat; else a live owner refreshed it or a new lock took its place, and it is put back with ``link``,
  which never overwrites), deletes it and takes the lock. The guarded work then resumes from whatever the dead worker
  left (the pipeline's stages resume from their own checkpoints and partial files).
- **Dead owner.** A lock written on this machine, in this kernel boot and PID namespace (``where``: hostname, boot id
  and PID-namespace inode; containers that share a hostname differ in the last two), whose ``pid`` no longer exists
  was left by a killed worker (SIGKILL, OOM, preemption): it is stale at once, so a rerun does not wait the timeout.
  A reused PID only makes it wait for the heartbeat rule.
- **Release.** Leaving the ``with`` block, normally or by an exception, stops the heartbeat and deletes the file if
  it is still this worker's (same token).

Clocks: staleness compares this machine's clock with the lock file's modification time, so the machines' clocks must
agree to well within ``stale_after_s`` (NTP does).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

STALE_AFTER_S = 300.0


def _where() -> str:
    """This process's machine, kernel boot and PID namespace: PIDs are comparable only between equal values."""
    parts = [socket.gethostname()]
    for path, read in (("/proc/sys/kernel/random/boot_id", lambda p: Path(p).read_text().strip()),
                       ("/proc/self/ns/pid", lambda p: str(os.stat(p).st_ino))):
        try:
            parts.append(read(path))
        except OSError:  # not Linux: no dead-owner rule (``where`` never matches), only the heartbeat
            return ""
    return "/".join(parts)


def _owner_is_dead(info: dict) -> bool:
    where, pid = info.get("where"), info.get("pid")
    if not where or where != _where() or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by another user
        pass
    return False


@dataclass(frozen=True)
class LockTiming:
    """How long a silent lock is trusted; the heartbeat and the polling follow from it."""

    stale_after_s: float = STALE_AFTER_S

    def __post_init__(self):
        if not (isinstance(self.stale_after_s, (int, float)) and 0 < self.stale_after_s < float("inf")):
            raise ValueError(f"stale_after_s must be a number of seconds > 0 (got {self.stale_after_s!r})")

    @property
    def heartbeat_s(self) -> float:  # ten heartbeats per timeout: a few late ones never make a live lock stale
        return self.stale_after_s / 10

    @property
    def poll_s(self) -> float:
        return min(2.0, self.heartbeat_s)


class FileLock:
    """An exclusive lock on ``path`` (see the module's docstring); a context manager."""

    def __init__(self, path: str | os.PathLike, timing: LockTiming | None = None,
                 echo: Callable[[str], None] | None = print):
        self.path = Path(path)
        self.timing = timing or LockTiming()
        self.echo = echo or (lambda message: None)
        self.token = uuid.uuid4().hex
        self.lost = False  # set by the heartbeat if the file stopped being ours (a takeover while we stalled)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> None:
        waited = False
        while not self._try_create():
            seen = self._read()
            if seen is None:  # released between our attempt and the read: try again at once
                continue
            info, stat = seen
            silent = time.time() - stat.st_mtime
            owner = f"{info.get('host', '?')} pid {info.get('pid', '?')}"
            dead = _owner_is_dead(info)
            if dead or silent > self.timing.stale_after_s:
                if self._break(stat):
                    why = "its process is gone" if dead else f"no heartbeat for {silent:.0f} s"
                    self.echo(f"{self.path}: stale lock of {owner} ({why}): taking over")
                continue
            if not waited:
                self.echo(f"{self.path}: held by {owner}; waiting")
                waited = True
            time.sleep(self.timing.poll_s)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"heartbeat {self.path.name}", daemon=True)
        self._beat.start()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self._is_mine():
            self.path.unlink()

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        # A reader may see the file empty for a moment: it then counts as held (its heartbeat is fresh).
        info = {"host": socket.gethostname(), "pid": os.getpid(), "where": _where(), "token": self.token,
                "since": time.time()}
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(info, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self, path: Path | None = None) -> tuple[dict, os.stat_result] | None:
        """The lock's owner and its stat (the heartbeat), or None if there is no lock. Opening the file (not only a
        stat) makes NFS revalidate its cached attributes."""
        try:
            with open(path or self.path, encoding="utf-8") as f:
                stat = os.fstat(f.fileno())
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(text)
        except ValueError:  # being written, or its writer died mid-write
            info = {}
        return (info if isinstance(info, dict) else {}), stat

    def _break(self, stale: os.stat_result) -> bool:
        """Remove the stale lock seen as ``stale``; False if it was not that one (another worker broke it first, or
        its owner came back)."""
        grave = self.path.with_name(f"{self.path.name}.stale-{self.token}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return False
        now = os.stat(grave)
        if (now.st_ino, now.st_mtime_ns) != (stale.st_ino, stale.st_mtime_ns):  # not the lock we judged stale
            try:
                os.link(grave, self.path)
            except FileExistsError:  # yet another worker has taken the lock meanwhile; the one we moved is lost
                pass
            except OSError:  # a file system without hard links: rename back, unless a lock is there again
                if not self.path.exists():
                    os.rename(grave, self.path)
                    return False
            os.unlink(grave)
            return False
        os.unlink(grave)
        return True

    def _is_mine(self) -> bool:
        seen = self._read()
        return seen is not None and seen[0].get("token") == self.token

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.timing.heartbeat_s):
            if not self._is_mine():
                self.lost = True
                self.echo(f"{self.path}: lock lost (taken over after a stall longer than "
                          f"{self.timing.stale_after_s:g} s)")
                return
            try:
                os.utime(self.path)
            except FileNotFoundError:
                self.lost = True
                return
