"""Writing a user's files safely: a run's outputs appear together, complete, or not at all.

Every command that writes goes through :class:`RunOutputs`:

- each output is checked when it is named, before any work: it may not be one of the run's
  inputs or another of its outputs (same resolved path or same file), it may not be a folder,
  and its folder must exist or be creatable, and be writable;
- each output is written to a private staging folder beside its target, under its final name
  (so a detached NRRD header names its data file correctly);
- :meth:`RunOutputs.commit` moves them all into place only when every one was written, with
  SIGINT and SIGTERM held off meanwhile; a replaced file keeps its permission bits; if a move
  fails, the files already replaced are put back;
- on any failure or interruption before that, the staging folders are removed and every
  existing file is as it was.

:func:`atomic_output` is the one-file case, for writers used outside a command.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

StrPath = str | os.PathLike


COMMITTED: list[Path] = []  # every output this process has moved into place


class OutputError(ValueError):
    """An output that cannot be written safely (it is an input, a folder, or not writable)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass
class _Output:
    target: Path  # resolved
    option: str  # how the user named it, for messages (e.g. "--report")
    staging: Path | None = None  # private folder beside the target, once written to
    created: list[Path] = field(default_factory=list)  # folders made for it, innermost first

    @property
    def staged(self) -> Path:
        assert self.staging is not None
        return self.staging / self.target.name


class RunOutputs:
    """The inputs and outputs of one run; outputs are committed together (see the module doc).

    Use as a context manager: leaving it with an exception (Ctrl-C included) discards whatever
    was staged; leaving it without calling :meth:`commit` discards it too.
    """

    def __init__(self) -> None:
        self._inputs: list[tuple[str, Path, tuple[int, int] | None]] = []
        self._outputs: list[_Output] = []
        self._companions: list[tuple[str, Path]] = []  # extra files outputs will write (detached data)

    # ----------------------------------------------------------------- naming
    def add_input(self, option: str, *paths: StrPath | None) -> None:
        """Register files the run reads (``None`` is skipped)."""
        for path in paths:
            if path is not None:
                resolved = Path(path).resolve()
                self._inputs.append((option, resolved, _identity(resolved)))

    def add_output(self, option: str, path: StrPath, companions: Iterable[StrPath] = ()) -> Path:
        """Register and check an output; returns its resolved target path.

        ``companions`` are further files written with it (a detached NRRD's data file): they are
        checked against the inputs and outputs too.
        """
        target = Path(path).resolve()
        for named in (target, *(Path(c).resolve() for c in companions)):
            self._check_free(option, path, named)
        _check_writable(option, path, target)
        self._outputs.append(_Output(target, option))
        self._companions.extend((option, Path(c).resolve()) for c in companions)
        return target

    def reserve(self, option: str, path: StrPath) -> Path:
        """Check a file the run writes itself, outside the commit (a training checkpoint): it may
        not be an input or an output, and no later output may be it."""
        target = Path(path).resolve()
        self._check_free(option, path, target)
        _check_writable(option, path, target)
        self._companions.append((option, target))
        return target

    def _check_free(self, option: str, given: StrPath, path: Path) -> None:
        identity = _identity(path)
        named = given if path == Path(given).resolve() else f"{given} (writing {path})"
        for other, resolved, other_identity in self._inputs:
            if path == resolved or (identity is not None and identity == other_identity):
                raise OutputError(f"{option} {named} is the same file as {other} ({resolved}), which this run "
                                  "reads: it would be overwritten; write the output to another file")
        for out in self._outputs:
            if path == out.target:
                raise OutputError(f"{option} {named} is also {out.option}: one output would overwrite the other")
        for other, companion in self._companions:
            if path == companion:
                raise OutputError(f"{option} {named} is also written by {other}: one output would overwrite "
                                  "the other")

    # ----------------------------------------------------------------- writing
    def stage(self, target: StrPath) -> Path:
        """Where to write the registered output ``target``: its final name in a staging folder."""
        out = self._find(target)
        if out.staging is None:
            out.created = _make_parents(out.target.parent)
            out.staging = Path(tempfile.mkdtemp(dir=out.target.parent, prefix=f".{out.target.name}.", suffix=".tmp"))
        return out.staged

    def _find(self, target: StrPath) -> _Output:
        resolved = Path(target).resolve()
        for out in self._outputs:
            if out.target == resolved:
                return out
        raise KeyError(f"{target} was not registered with add_output")

    def commit(self) -> list[Path]:
        """Move every staged output into place (all of them, or none); returns the targets."""
        missing = [o.option for o in self._outputs if o.staging is None or not o.staged.exists()]
        if missing:
            raise RuntimeError(f"outputs {missing} were registered but not written")
        with _signals_held():
            COMMITTED.extend(o.target for o in self._outputs)  # a signal held off until now finds them written
            done: list[tuple[Path, Path | None]] = []  # (file moved into place, backup of what it replaced)
            try:
                for out in self._outputs:
                    for staged in sorted(out.staging.iterdir()):  # the file and any detached data file
                        done.append(_replace(staged, out.target.parent / staged.name, out.staging))
            except BaseException:
                del COMMITTED[-len(self._outputs):]
                for placed, backup in reversed(done):
                    if backup is not None:
                        os.replace(backup, placed)
                    else:
                        placed.unlink(missing_ok=True)
                raise
            finally:
                self.discard()
        return [o.target for o in self._outputs]

    def discard(self) -> None:
        """Remove everything staged (and folders made for it); existing files are untouched."""
        for out in self._outputs:
            if out.staging is not None:
                shutil.rmtree(out.staging, ignore_errors=True)
                out.staging = None
        created = sorted({f for out in self._outputs for f in out.created}, key=lambda f: len(f.parts), reverse=True)
        for folder in created:  # innermost first; a folder something else was written into stays
            with suppress(OSError):
                folder.rmdir()
        for out in self._outputs:
            out.created = []

    def __enter__(self) -> RunOutputs:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def _check_writable(option: str, given: StrPath, target: Path) -> None:
    if target.is_dir():
        raise OutputError(f"{option} {given} is a folder: give a file name")
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{option} {given}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {given}: cannot write in the folder {folder} (permission denied)")
    if target.exists() and not target.is_file():
        raise OutputError(f"{option} {given} is not a regular file (a device, pipe or socket): it would be replaced; "
                          "give a file name")
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputError(f"{option} {given} is read-only: make it writable or write another file")


def _make_parents(folder: Path) -> list[Path]:
    created = []
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    for path in reversed(created):
        path.mkdir()
    return created  # innermost first


def _replace(staged: Path, target: Path, staging: Path) -> tuple[Path, Path | None]:
    """Move ``staged`` over ``target``, keeping the replaced file's permission bits and a backup."""
    backup = None
    if target.exists():
        os.chmod(staged, stat.S_IMODE(target.stat().st_mode))
        backup = staging / f".backup-{target.name}"
        try:
            os.link(target, backup)
        except OSError:  # file systems without hard links
            shutil.copy2(target, backup)
    else:
        os.chmod(staged, 0o666 & ~_umask())
    os.replace(staged, target)
    return target, backup


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM off (delivered after the block), in the main thread where possible."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def atomic_output(path: StrPath) -> Iterator[str]:
    """Yield a file name to write ``path``'s content to; it replaces ``path`` if the block succeeds.

    The name is ``path``'s own name in a staging folder beside it (writers such as nibabel pick
    the format from the suffix; a detached NRRD names its data file after it).
    """
    with RunOutputs() as run:
        run.add_output("the output", path)
        yield str(run.stage(path))
        run.commit()
