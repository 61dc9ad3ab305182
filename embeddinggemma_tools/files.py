# Copyright 2026 the embeddinggemma authors. Licensed under the Apache License, Version 2.0.
"""File safety shared by every tool (converter, trainer, corpus embedder): atomic writes, a lock per output folder,
liveness of the process that wrote something, and fingerprints of files and model folders.

The tools import these from here and from nowhere else; none of it is remote code (model folders never need it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path


class FolderBusy(ValueError):
    """Another run holds the lock of an output folder."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Files of a model folder that change its output: config and tokenizer files, code, weights.
FINGERPRINTED = (".json", ".py", ".safetensors", ".model", ".txt")


def fingerprint_folder(folder: str | os.PathLike, cache: str | os.PathLike | None = None) -> str:
    """SHA-256 over every file of `folder` that changes the model's output (config, tokenizer, code, and all the
    bytes of every weights file). Hashing 1.2 GB takes seconds; with `cache` (a JSON file), each file's digest is
    kept by (size, mtime, inode) and recomputed only when one of those changed."""
    folder = Path(folder)
    cache = Path(cache) if cache else None
    known = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except ValueError:
            known = {}
    digests, digest = {}, hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in FINGERPRINTED):
        name = path.relative_to(folder).as_posix()
        if name.startswith(".") or "/." in name:
            continue
        stat = path.stat()
        key = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
        entry = known.get(name)
        file_digest = entry["sha256"] if entry and entry.get("key") == key else file_sha256(path)
        digests[name] = {"key": key, "sha256": file_digest}
        digest.update(f"{name}:{file_digest}\n".encode())
    if cache is not None and digests != known:
        write_json_atomically(cache, digests)
    return digest.hexdigest()


def write_json_atomically(path: Path, content) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


LOCK = "_lock"
# A run refreshes its lock's time every LOCK_HEARTBEAT_S; a lock not refreshed for LOCK_STALE_S belongs to a run that
# is gone (killed, or its machine lost), and the next run takes it over.
LOCK_HEARTBEAT_S = 30.0
LOCK_STALE_S = 300.0


class OutputLock:
    """One job per output folder, also across machines sharing the filesystem: OUTPUT/_lock is created with O_EXCL
    (atomic on local and network filesystems) and holds who owns it; the owner refreshes its time while it runs. A
    lock left by a run that is gone is taken over: at once when its process is missing on this host, else once its
    time is LOCK_STALE_S old. Two runs breaking the same stale lock race on a rename, which only one wins."""

    def __init__(self, output: Path, error: type[Exception] = FolderBusy):
        self.path = output / LOCK
        self.error = error  # raised when another run holds the folder (each tool's own error class)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        for _ in range(5):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not self._stale(holder):
                    raise self.error(
                        f"{self.path.parent} is being written by another run (pid {holder.get('pid')} on "
                        f"{holder.get('host')}, started {holder.get('started')}); wait for it to finish, or choose "
                        f"another --output. A run that died leaves its lock, which the next run takes over once it "
                        f"is {int(LOCK_STALE_S)} s old (at once on the same machine)."
                    ) from None
                if holder is not None:  # stale: break it; of several runs racing here, one rename wins
                    broken = self.path.with_name(f".{LOCK}.stale-{self.owner['token']}")
                    try:
                        os.replace(self.path, broken)
                    except FileNotFoundError:
                        continue
                    if _read_json(broken).get("token") != holder.get("token"):  # a fresh lock taken meanwhile
                        try:
                            os.link(broken, self.path)  # give it back, unless yet another run holds the name
                        except FileExistsError:
                            pass
                    broken.unlink()
                continue
            with os.fdopen(descriptor, "w") as handle:
                json.dump({**self.owner, "started": time.strftime("%Y-%m-%d %H:%M:%S")}, handle)
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()
            return self
        raise self.error(f"Could not take the lock {self.path} (other runs kept taking it); try again.")

    def __exit__(self, *exc):
        self._stop.set()
        holder = self._holder()
        if holder and holder.get("token") == self.owner["token"]:
            self.path.unlink(missing_ok=True)

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            holder["age"] = time.time() - self.path.stat().st_mtime
            return holder
        except FileNotFoundError:
            return None
        except (ValueError, OSError):  # being written right now: its age decides
            try:
                return {"age": time.time() - self.path.stat().st_mtime}
            except FileNotFoundError:
                return None

    def _stale(self, holder: dict) -> bool:
        """Its run is gone: no such process on this host, or no heartbeat for LOCK_STALE_S (any host)."""
        if holder.get("host") == self.owner["host"] and not process_alive(holder.get("pid")):
            return True
        return holder["age"] > LOCK_STALE_S

    def _heartbeat(self):
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def process_alive(pid) -> bool:
    """Whether process `pid` runs on this host (locks, the converter's temporary folders, Ray's helpers). Anything but
    a positive int, as read from a damaged lock or owner file, is no process."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def process_start_time(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (Linux /proc), which tells a process from a later one that
    reuses its pid; None where it is gone or /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


OWNER_FILE = ".embeddinggemma-writer.json"  # in a temporary folder while it is written: who writes it


def remove_stale_temporary_folders(output_dir: Path) -> list[Path]:
    """Temporary folders of earlier conversions to the same output whose writer is gone (killed with SIGKILL, or its
    machine restarted): they hold a whole model's weights. Folders of a writer still running are left alone."""
    removed = []
    for candidate in output_dir.parent.glob(f".{output_dir.name}.*-*"):
        owner = candidate / OWNER_FILE
        if not candidate.is_dir() or not owner.is_file():
            continue
        try:
            writer = json.loads(owner.read_text())
        except (OSError, ValueError):
            continue
        if writer.get("host") == socket.gethostname() and not process_alive(writer.get("pid")):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


class _Terminated(BaseException):
    """SIGTERM during a conversion: unwinds like Ctrl-C, so the temporary folder is removed."""


def write_folder_atomically(output_dir: Path, write: Callable[[Path], None], error: type[Exception] = OSError) -> None:
    """Calls `write(tmp_dir)` on a fresh folder beside `output_dir`, then moves it into place. On any error, Ctrl-C or
    SIGTERM the temporary folder is removed and `output_dir` is left as it was; one left by a SIGKILLed run is removed
    by the next run (see `remove_stale_temporary_folders`). Files get the usual permissions (umask), not 0600. A
    failed write raises `error` (each tool's own error class) saying nothing was written."""
    remove_stale_temporary_folders(output_dir)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = None

    def terminate(signum, frame):
        raise _Terminated()

    try:
        if in_main_thread:
            previous = signal.signal(signal.SIGTERM, terminate)
        (tmp_dir / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        write(tmp_dir)
        (tmp_dir / OWNER_FILE).unlink()
        apply_umask(tmp_dir)
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, old / output_dir.name)
            os.replace(tmp_dir, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_dir, output_dir)
    except OSError as failure:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise error(f"Writing {output_dir} failed ({failure}); nothing was written.") from failure
    except _Terminated:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise SystemExit(128 + signal.SIGTERM) from None
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def apply_umask(folder: Path) -> None:
    """Folders 0777 and files 0666 less the umask, as a plain write would give (tempfile and some writers use 0600)."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
