"""The one way PairSeg writes a file: whole, or not at all (standard library only).

Every output (label maps, probabilities, proxy maps, pictures, JSON reports, model files,
checkpoints, the training settings, and on the Slicer side the model registry and exported
dataset manifests) goes through :func:`atomic_write`:

1. the writer writes a *temporary* file beside the destination, named
   ``.<stem>.tmp-<pid>-<8 hex><suffix>`` (the suffix kept, so format-sniffing writers such as
   ITK pick the right format; the process id and a random part make every run's name its own);
   the file is created like any other the user writes (mode 0666 less the umask);
2. the temporary is flushed to the disk (``fsync``), which surfaces a full disk or quota
   that only shows at write-back;
3. a ``verify`` function re-reads it and raises when it is not complete (a truncated gzip stream,
   a short file): a writer that ignored a failed ``write`` is caught here;
4. only then it replaces the destination (``os.replace``) and the folder is flushed.

Any failure removes the temporary (a failure to remove it never hides the first error) and
becomes one :class:`~pairseg.errors.PairSegOutputError` naming the user's path and the reason
(full disk, quota, name too long, read-only, permission...); the destination is left as it was.

:func:`check_writable` tries the same up front, before any work: it creates a file with a
name as long as the temporary's in the folder, so read-only mounts, permissions and the
file-system's name-length limit are all found before a long run.
:func:`remove_stale_temporaries` removes only the temporaries whose writing process is gone, so
two runs onto the same output never delete each other's files.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import re
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator, Optional, Sequence, Union

from pairseg.errors import PairSegOutputError

__all__ = ["atomic_write", "write_bytes", "write_text", "write_json", "write_stream", "check_writable",
           "remove_stale_temporaries", "temporary_name", "write_together", "output_error", "suffix_of",
           "verify_gzip", "verify_zip", "IncompleteWrite"]

PathLike = Union[str, os.PathLike]

#: A temporary written on another machine (a shared folder), or where processes cannot be probed
#: safely (Windows), is removed only once it is this old (seconds).
STALE_AFTER_S = 3600.0

#: 4 hex digits of this machine's name, in every temporary name: whose process ids they hold.
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:4]
_SERIAL = itertools.count(uuid.uuid4().int & 0xFFFF)  # temporary names of this process (next() is atomic)

_COMPOUND_SUFFIXES = (".seg.nrrd", ".nii.gz")


class IncompleteWrite(OSError):
    """The file read back is not what was written (raised by the ``verify`` functions)."""


def suffix_of(path: PathLike) -> str:
    """The file type of ``path`` in lower case; ".seg.nrrd" and ".nii.gz" are one suffix."""
    name = Path(path).name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def _split(target: Path) -> tuple[str, str]:
    n = len(suffix_of(target))
    name = target.name
    return (name[:len(name) - n], name[len(name) - n:]) if n else (name, "")


def temporary_name(target: PathLike, kind: str = "tmp") -> Path:
    """``.<stem>.<kind>-<pid>-<8 hex><suffix>`` beside ``target`` (the hex: 4 of this machine's
    name, then 4 of a per-process counter that starts at a random value, so 65,536 names in a row
    of one process differ; the process id and the machine part tell processes apart).
    ``kind="old"`` names the copy of an existing output that :func:`write_together` keeps until
    its outputs are all in place."""
    target = Path(target)
    stem, suffix = _split(target)
    return target.parent / f".{stem}.{kind}-{os.getpid()}-{_HOST}{next(_SERIAL) & 0xFFFF:04x}{suffix}"


def _longest_temporary_name(target: Path) -> str:
    stem, suffix = _split(target)
    # the longest name a write of ``target`` uses: a side file (".forms", ".data") of a temporary
    return f".{stem}.tmp-{'9' * 10}-{'f' * 8}{suffix}.forms"


def reason(exc: BaseException, folder: Optional[PathLike] = None) -> str:
    """The readable reason of a write failure: the system's words for an OSError (ENOSPC, EDQUOT,
    ENAMETOOLONG, EROFS, EACCES ...), the last line of a writer's own error otherwise (ITK, torch);
    for those and for a file that did not read back whole, the free space of ``folder`` when it is
    (nearly) full, which such writers do not say."""
    if isinstance(exc, OSError) and not isinstance(exc, IncompleteWrite):
        return exc.strerror or str(exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", lines[-1]) if lines else type(exc).__name__
    if folder is not None:
        import shutil

        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = None
        if free is not None and free < (1 << 20):
            text += f"; {os.strerror(errno.ENOSPC)} ({free} bytes free)"
    return text


def output_error(path: PathLike, exc: BaseException, what: str = "output",
                 temporaries: Sequence[PathLike] = ()) -> PairSegOutputError:
    """The one-line PairSegOutputError for a failed write of ``path``; temporary names in the
    reason are replaced by ``path``."""
    text = reason(exc, Path(path).parent)
    for tmp in temporaries:
        text = text.replace(str(tmp), str(path))
    return PairSegOutputError(f"{path}: cannot write {what} ({text})")


def _remove_quietly(path: PathLike) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_file(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY if os.name == "posix" else os.O_RDWR)  # Windows commits writable handles only
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: PathLike) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename itself is done
    finally:
        os.close(fd)


def verify_gzip(path: PathLike, offset: int = 0, chunk: int = 1 << 20) -> int:
    """Decompress the gzip stream(s) from ``offset`` to the end of ``path``, which checks their CRC
    and length, ``chunk`` bytes at a time; returns the number of decompressed bytes. Raises
    IncompleteWrite when truncated or corrupt."""
    import gzip
    import zlib

    total = 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        try:
            with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
                for block in iter(lambda: stream.read(chunk), b""):
                    total += len(block)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise IncompleteWrite(f"the written gzip data is truncated or corrupt after {total} bytes "
                                  f"({exc})") from None
    return total


def verify_zip(path: PathLike) -> None:
    """A zip archive (a PyTorch checkpoint) whose directory and every member's CRC read back."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as exc:
        raise IncompleteWrite(f"the written archive is incomplete ({exc})") from None
    if bad is not None:
        raise IncompleteWrite(f"the written archive is corrupt (member {bad})")


def _verify_size(size: int) -> Callable[[str], None]:
    def verify(tmp: str) -> None:
        written = os.path.getsize(tmp)
        if written != size:
            raise IncompleteWrite(f"{written} of {size} bytes reached the disk")
    return verify


def _verify_json(tmp: str) -> None:
    try:
        with open(tmp, encoding="utf-8") as stream:
            json.load(stream)
    except ValueError as exc:
        raise IncompleteWrite(f"the written JSON does not read back ({exc})") from None


class _Transaction(threading.local):
    pending: Optional[list] = None


_transaction = _Transaction()


@contextmanager
def write_together() -> Iterator[None]:
    """Within the block, :func:`atomic_write` leaves its verified temporaries in place; when the
    block ends without error they replace their destinations together, else none does.

    Destinations that existed are moved aside first and put back if any rename fails, so a
    failing later output never leaves an earlier one replaced.
    """
    if _transaction.pending is not None:  # nested: the outer block commits
        yield
        return
    _transaction.pending = []
    try:
        yield
        pending, _transaction.pending = _transaction.pending, None
        _commit(pending)
    except BaseException:
        for tmp, _, _ in _transaction.pending or []:
            _remove_quietly(tmp)
        raise
    finally:
        _transaction.pending = None


def _commit(pending: list) -> None:
    backups: list[tuple[Path, Path]] = []
    done: list[Path] = []
    current = pending[0] if pending else None
    try:
        for entry in pending:
            current = entry
            tmp, target, _ = entry
            if target.exists():
                backup = temporary_name(target, "old")
                os.replace(target, backup)
                backups.append((backup, target))
            os.replace(tmp, target)
            done.append(target)
    except OSError as exc:
        for target in done:
            _remove_quietly(target)
        for backup, target in backups:
            try:
                os.replace(backup, target)
            except OSError:
                pass
        for tmp, _, _ in pending:
            _remove_quietly(tmp)
        error = output_error(current[1], exc, current[2], [current[0]])
        raise PairSegOutputError(f"{error}; no output of this case was replaced") from None
    for backup, _ in backups:
        _remove_quietly(backup)
    for folder in {target.parent for _, target, _ in pending}:
        _fsync_folder(folder)


def atomic_write(path: PathLike, write: Callable[[str], None], verify: Optional[Callable[[str], None]] = None,
                 what: str = "output") -> Path:
    """Write ``path`` through a temporary: ``write(tmp)`` creates the file named ``tmp``; it is
    flushed to the disk, ``verify(tmp)`` re-reads it (raise OSError/IncompleteWrite when it is
    incomplete; default: gzip files are decompressed to their end, ``.json`` parsed), and it is
    renamed to ``path`` (inside :func:`write_together`, at the block's end).

    Missing folders are created. Raises PairSegOutputError naming ``path`` (never the temporary)
    for any OSError, or RuntimeError of the writer (ITK and torch report write failures so);
    the temporary and its side files are removed and ``path`` is left as it was.
    """
    target = Path(path)
    if target.is_dir():
        raise PairSegOutputError(f"{target}: {what} is an existing folder; give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PairSegOutputError(f"{target}: cannot create its folder ({reason(exc)})") from None
    tmp = temporary_name(target)
    try:
        write(str(tmp))
        _fsync_file(tmp)
        (verify or _default_verify)(str(tmp))
        if _transaction.pending is not None:
            _transaction.pending.append((tmp, target, what))
        else:
            os.replace(tmp, target)
            _fsync_folder(target.parent)
    except (OSError, RuntimeError) as exc:
        _remove_quietly(tmp)
        raise output_error(target, exc, what, [tmp]) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise
    return target


def _default_verify(tmp: str) -> None:
    suffix = suffix_of(tmp)
    if suffix == ".json":
        _verify_json(tmp)
        return
    with open(tmp, "rb") as handle:
        magic = handle.read(2)
    if magic == b"\x1f\x8b":
        verify_gzip(tmp)


def write_stream(path: PathLike, write: Callable[[IO[bytes]], None], verify: Optional[Callable[[str], None]] = None,
                 what: str = "output") -> Path:
    """:func:`atomic_write` for a writer that takes an open binary stream (``torch.save`` ...)."""
    def to_file(tmp: str) -> None:
        with open(tmp, "xb") as stream:
            write(stream)
    return atomic_write(path, to_file, verify, what)


def write_bytes(path: PathLike, data: bytes, what: str = "output") -> Path:
    """Write ``data`` atomically; the size that reached the disk is checked."""
    return write_stream(path, lambda stream: stream.write(data), _verify_size(len(data)), what)


def write_text(path: PathLike, text: str, what: str = "output") -> Path:
    """Write a UTF-8 text file atomically (a ``.json`` one must parse back)."""
    data = text.encode("utf-8")
    check = _verify_size(len(data))

    def verify(tmp: str) -> None:
        check(tmp)
        if suffix_of(tmp) == ".json":
            _verify_json(tmp)
    return write_stream(path, lambda stream: stream.write(data), verify, what)


def write_json(path: PathLike, value, what: str = "output", indent: int = 1) -> Path:
    """``json.dumps(value, indent=indent)`` plus a newline, written atomically."""
    return write_text(path, json.dumps(value, indent=indent) + "\n", what)


def check_writable(path: PathLike, what: str = "output", folder: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written: the nearest existing folder on
    its way must accept a new file whose name is as long as the longest temporary a write of
    ``path`` uses (tried for real: read-only mounts, permissions, ACLs, quotas on inodes and the
    name-length limit all count). A ``folder`` output is checked for a file inside it.
    Raises PairSegOutputError naming ``path``.
    """
    target = Path(path)
    ancestor = target if folder else target.parent
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PairSegOutputError(f"{target}: cannot write {what}: {ancestor} is a file, not a folder")
    names = [] if folder else [_longest_temporary_name(target)]
    if not folder and ancestor != target.parent:  # missing folders: their names must fit too
        names += [part for part in target.parent.relative_to(ancestor).parts]
    probe = ancestor / f".pairseg-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    for name in names:
        if len(os.fsencode(name)) > _name_max(ancestor):
            raise PairSegOutputError(f"{target}: cannot write {what}: the name is too long for the file system "
                                     f"in {ancestor} (PairSeg's temporary name {name!r} has "
                                     f"{len(os.fsencode(name))} bytes, the limit is {_name_max(ancestor)})")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        _remove_quietly(probe)
        raise PairSegOutputError(f"{target}: cannot write {what} in {ancestor} ({reason(exc)})") from None
    return target


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        return 255


def _temporary_patterns(target: Path) -> list[re.Pattern]:
    stem, suffix = _split(target)
    tail = re.escape(suffix) + r"(\.forms|\.data)?"
    return [
        re.compile(re.escape(f".{stem}.tmp-") + r"(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{4})[0-9a-f]{4}" + tail),
        re.compile(re.escape(f".{stem}.tmp-") + "[0-9a-f]{8}" + tail),  # earlier versions' (no owner)
        re.compile(re.escape(f".{target.name}.") + "[A-Za-z0-9_]{8}" + re.escape(".tmp")),
    ]


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True  # cannot tell without a probe that could harm it: the age rule decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(path: PathLike) -> list[Path]:
    """Delete the temporaries that earlier, killed writes of ``path`` left beside it; returns them.

    Only names PairSeg's writes give a temporary of exactly this output match. A temporary written
    on this machine is removed once its process is gone (a live one is another run writing the
    same output); one written elsewhere once it is :data:`STALE_AFTER_S` old.
    """
    target = Path(path)
    if not target.parent.is_dir():
        return []
    patterns = _temporary_patterns(target)
    removed = []
    now = time.time()
    for entry in target.parent.iterdir():
        match = next((m for m in (p.fullmatch(entry.name) for p in patterns) if m), None)
        if match is None or not entry.is_file():
            continue
        pid = match.groupdict().get("pid")
        if pid is not None:
            here = match.group("host") == _HOST and os.name == "posix"
            if here and _alive(int(pid)):
                continue
            if not here and now - entry.stat().st_mtime < STALE_AFTER_S:
                continue
        try:
            entry.unlink()
            removed.append(entry)
        except OSError:
            pass  # not ours to delete: leave it
    return removed
