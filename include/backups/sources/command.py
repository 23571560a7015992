"""``command`` source: the standard output of a command (system state, versions), exit code checked."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import SourceError
from .base import Prepared, SourceReader, walk_staging


class CommandSource(SourceReader):
    kind = "command"
    change_detection = "checksum"

    def __init__(self, name: str, command: list[str], timeout: int = 300) -> None:
        super().__init__(name)
        self.command = list(command)
        self.timeout = timeout

    def check(self) -> None:
        if shutil.which(self.command[0]) is None:
            raise SourceError(f"source {self.name}: command {self.command[0]!r} not found on PATH",
                              hint=f"install it or fix sources.{self.name}.command")

    def estimate(self) -> int:
        return 1 << 16

    @contextmanager
    def prepare(self, staging: Path) -> Iterator[Prepared]:
        self.check()
        out = staging / "stdout"
        with open(out, "wb") as fh:
            try:
                proc = subprocess.run(self.command, stdout=fh, stderr=subprocess.PIPE, timeout=self.timeout, check=False)
            except subprocess.TimeoutExpired:
                raise SourceError(f"source {self.name}: command {self.command[0]} did not finish in {self.timeout} s",
                                  hint=f"raise sources.{self.name}.timeout_seconds") from None
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip()[-500:]
            raise SourceError(f"source {self.name}: command {self.command[0]} exited with {proc.returncode}: {tail}")
        yield Prepared(entries=walk_staging(staging), details={"command": self.command[0], "exit_code": 0})
