"""Writes that a crash cannot leave half done: one file, or a whole folder.

A file is written under a temporary name in its own folder, flushed to disk, then renamed over the
target: ``os.replace`` within one filesystem is atomic, so a reader sees the old file or the new one,
never a prefix of either. Temporary names start with ``.`` and end with ``.tmp`` (``TMP_SUFFIX``) so a
folder's owner can recognise and clean what a killed writer left behind.

A folder (a model checkpoint: weights, shard index and config that must agree) cannot be made
consistent by replacing its files one by one: a writer killed between two renames leaves new shards
beside an old index or new weights beside an old config. ``replace_folder`` therefore fills a fresh
sibling folder and swaps the two directory entries in one step (Linux ``renameat2(RENAME_EXCHANGE)``,
macOS ``renamex_np(RENAME_SWAP)``). Where neither exists the swap takes two renames, and a kill between
them leaves the old contents under ``<name>.previous`` beside a missing ``<name>``; ``interrupted_swap``
finds that so a loader can say where the data went instead of "no such folder".
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

TMP_SUFFIX = ".tmp"
PREVIOUS_SUFFIX = ".previous"  # the old folder, only while a two-rename swap is under way


# ------------------------------------------------------------------------------------------------- files
def _write_via_temp(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Run ``write(tmp_path)``, make the bytes durable, rename over ``path``; no temp file survives an error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (readers see the old or the new content, never a mix)."""
    _write_via_temp(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``atomic_write_bytes`` of ``text`` in UTF-8 (always UTF-8: JSON and configs must not depend on locale)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Write rows as JSON lines (one object a line, UTF-8 kept as is), creating the folder, atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` through a temporary file; tensors must be contiguous CPU tensors."""
    _write_via_temp(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Persist a rename (POSIX keeps directory entries in the directory's own blocks); no-op where unsupported."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------- folders
def _sibling(folder: Path, tag: str) -> Path:
    return folder.parent / f".{folder.name}.{tag}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"


def stale_siblings(folder: str | os.PathLike) -> list[Path]:
    """Temporary siblings of ``folder`` that a killed ``replace_folder`` left behind.

    (Two processes replacing the same folder at once would remove each other's; that is a race
    between two writers of one checkpoint, which no layout can make meaningful.)
    """
    folder = Path(folder)
    return sorted(p for p in folder.parent.glob(f".{glob.escape(folder.name)}.new-*{TMP_SUFFIX}") if p.is_dir())


def interrupted_swap(folder: str | os.PathLike) -> Path | None:
    """The old contents of ``folder`` if a two-rename swap was killed between its renames, else None."""
    folder = Path(folder)
    previous = folder.parent / f"{folder.name}{PREVIOUS_SUFFIX}"
    return previous if previous.is_dir() and not folder.exists() else None


@contextmanager
def replace_folder(folder: str | os.PathLike, keep: Callable[[Path], bool] = lambda p: False) -> Iterator[Path]:
    """Yield an empty sibling folder to fill; on a clean exit it replaces ``folder`` in one step.

    ``keep(path)`` says which entries of the old folder (a tokenizer, a README, ...) the new one
    inherits; they are hard-linked (copied where links are impossible), not moved, so the old folder
    stays whole until the swap. On an exception nothing at ``folder`` changes and the sibling is
    removed; a killed process leaves the sibling, which the next ``replace_folder`` removes.
    ``folder`` may be a symlink: the folder it points to is replaced.
    """
    folder = Path(os.path.realpath(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_siblings(folder):
        shutil.rmtree(stale, ignore_errors=True)
    new = _sibling(folder, "new")
    new.mkdir()
    try:
        if folder.is_dir():
            for entry in folder.iterdir():
                if keep(entry):
                    _link_tree(entry, new / entry.name)
        yield new
        _swap_in(new, folder)
    finally:
        shutil.rmtree(new, ignore_errors=True)  # after a swap this holds the old contents


def _link_tree(source: Path, target: Path) -> None:
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, target)


def _link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        return
    try:
        os.link(source, target)
    except OSError:  # other filesystem semantics (no hard links): a plain copy is still correct
        shutil.copy2(source, target)


def _swap_in(new: Path, folder: Path) -> None:
    """Put ``new`` at ``folder``; afterwards ``new`` names the old contents (or nothing)."""
    _fsync_dir(new)  # the carried-over links' entries must be on disk before the swap is
    if not folder.exists():
        os.rename(new, folder)
        _fsync_dir(folder.parent)
        return
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; a model folder cannot replace it")
    if not _exchange(new, folder):
        previous = folder.parent / f"{folder.name}{PREVIOUS_SUFFIX}"
        shutil.rmtree(previous, ignore_errors=True)
        os.rename(folder, previous)
        os.rename(new, folder)
        os.rename(previous, new)
    _fsync_dir(folder.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries; False where the OS or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        result = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rename_swap = 2
        result = libc.renamex_np(os.fsencode(a), os.fsencode(b), rename_swap)
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, f"could not swap {a} and {b}: {os.strerror(code)}")
