"""One restore per target directory: a claim file next to the target, naming the run that writes into it.

Restores run concurrently (the repository's shared lock protects the snapshots; a prune waits for all of them);
what must not happen is two restores writing into the *same* directory. The restore step claims its target by
creating ``<parent>/.<name>.restore-lock`` atomically (written under a temporary name, then ``link(2)``-ed into
place: the claim appears whole or not at all) holding the owner: door, run id, user, host, pid and start time.

* A second restore into the same target is refused at once (RefusedError, exit 7) naming the run that holds it.
* The same run may claim again (a retried task, the DAG's later tasks): the claim is keyed by the run id.
* The claim is released by its run: the CLI when it returns or fails; the DAG by its ``report`` task, or by the
  failure callback of ``restore``, ``verify_restored`` and ``report`` (they run on the target's host).
* A CLI claim whose process is gone (same host, pid not alive) is stale and taken over; a DAG run's claim stays
  until the run releases it — if its worker died, the refusal says which file to remove.

The file lives in the target's parent (not in the target, so the restore's own "empty target" check and the
restored tree are unaffected); the parent is created when it is missing.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import RefusedError

SUFFIX = ".restore-lock"


@dataclass
class TargetOwner:
    """Who restores into a target: ``door`` ("cli" or the DAG id) and ``run_id`` identify the run."""

    door: str
    run_id: str
    user: str = "unknown"
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def describe(self) -> str:
        where = f"`backupctl restore` (pid {self.pid} on {self.host})" if self.door == "cli" else f"{self.door} run"
        return f"{where} {self.run_id} of {self.user}, started {self.started}"


def lock_path(target: str | Path) -> Path:
    """The claim file of ``target``: ``.<name>.restore-lock`` in its parent directory."""
    p = Path(os.path.normpath(str(target)))
    return p.parent / f".{p.name}{SUFFIX}"


def holder(target: str | Path) -> TargetOwner | None:
    """The owner of ``target``'s claim, or None when nobody claims it (or the claim is stale)."""
    path = lock_path(target)
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        owner = TargetOwner(**{k: data[k] for k in TargetOwner.__dataclass_fields__ if k in data})
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, TypeError):
        # unreadable or foreign: still a claim, by someone we cannot name
        return TargetOwner(door="unknown", run_id=f"(unreadable {path.name})")
    return None if _stale(owner) else owner


def _stale(owner: TargetOwner) -> bool:
    if owner.door != "cli" or owner.host != socket.gethostname():
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _refusal(target: str | Path, other: TargetOwner) -> RefusedError:
    return RefusedError(f"restore: target {target} is already being restored by {other.describe()}; refused, so two "
                        "restores never write into one directory (nothing was written)",
                        hint="wait until that run has finished, or restore into another directory; if it is no "
                             f"longer running, remove {lock_path(target)}")


def check_free(target: str | Path, run_id: str | None = None) -> None:
    """RefusedError naming the other run when a run other than ``run_id`` claims ``target`` (nothing written)."""
    other = holder(target)
    if other is not None and other.run_id != run_id:
        raise _refusal(target, other)


def claim(target: str | Path, owner: TargetOwner) -> None:
    """Claim ``target`` for ``owner``'s run (again, if it holds it already); RefusedError naming the other run
    when another run holds it."""
    path = lock_path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RefusedError(f"restore: cannot create {path.parent} for the target's claim file ({exc.strerror})",
                           hint="choose a target whose parent directory this user can write") from None
    for _ in range(3):
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{id(owner)}.tmp")
        tmp.write_text(json.dumps(asdict(owner), sort_keys=True) + "\n", encoding="utf-8")
        try:
            os.link(tmp, path)
            return
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        other = holder(target)
        if other is None:  # stale (or released meanwhile): take it over
            with suppress(FileNotFoundError):
                path.unlink()
            continue
        if other.run_id == owner.run_id:
            return
        raise _refusal(target, other)
    raise RefusedError(f"restore: could not claim the target {target} (its claim file {path} keeps changing)",
                       hint="another restore is starting into the same directory: wait and try again")


def release(target: str | Path, run_id: str) -> bool:
    """Remove ``target``'s claim when ``run_id`` holds it; True when it did."""
    path = lock_path(target)
    owner = holder(target)
    if owner is None or owner.run_id != run_id:
        return False
    with suppress(FileNotFoundError):
        path.unlink()
    return True


@contextmanager
def claimed(target: str | Path, owner: TargetOwner) -> Iterator[None]:
    """The target claimed for the block (the CLI's whole run), released afterwards whatever happened."""
    claim(target, owner)
    try:
        yield
    finally:
        release(target, owner.run_id)
