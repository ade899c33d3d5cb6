"""Storage roots: the directories a version's files may live in on this node.

The home is always the root ``home``; an admin declares the others (``SUPEROLLAMA_STORAGE_ROOTS``,
``fast=/mnt/nvme,/mnt/hdd``). A version lives in exactly one root: its blobs are
``ROOT/blobs/sha256-<hex>`` there, and its manifest (always in the home) names the root. ``mv NAME --to``
accepts only a root by name (``home``, ``fast``) or by its exact path; nothing else, so a client cannot
make the server write into ``/etc`` or into a path relative to its working directory.

Every path is resolved (``realpath``) before it is compared or checked, so a symlink or ``..`` cannot
turn one root into another directory. A declared root is usable when it exists, is a directory, a
probe file can be created in it, it is not the home, it holds no ``manifests/`` (another model store's,
whose blobs our garbage collection would take for ours) and its ``blobs/``, if any, is a real directory.
An unusable root is reported (start-up warning, ``GET /admin/v1/storage``) and refused as a destination;
the check runs again at each move, since disks come and go.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from superollama.errors import InvalidRequest

__all__ = ["HOME_ROOT", "StorageRoot", "StorageRoots", "root_problem"]

HOME_ROOT = "home"


@dataclass(frozen=True)
class StorageRoot:
    """One storage root: its name, its real path, and why it cannot be used (None: it can)."""

    name: str
    path: Path
    declared: str  # as the setting spells it (the home: its path)
    is_home: bool = False
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def location(self) -> Path | None:
        """What a manifest records: None for the home (so a home that moves keeps its versions)."""
        return None if self.is_home else self.path

    def disk(self) -> tuple[int, int] | None:
        """(free, total) bytes of its filesystem; None when it cannot be read (blocking)."""
        try:
            usage = shutil.disk_usage(self.path)
        except OSError:
            return None
        return usage.free, usage.total


def root_problem(path: Path, home: Path) -> str | None:
    """Why ``path`` (already resolved) cannot be a storage root, or None (blocking: probes the disk)."""
    if path == home:
        return "it is the home, which is always the root 'home'"
    if not path.exists():
        return "it does not exist"
    if not path.is_dir():
        return "it is not a directory"
    if (path / "manifests").exists():
        return "it holds a manifests/ folder: another model store lives there"
    blobs = path / "blobs"
    if blobs.is_symlink() or (blobs.exists() and not blobs.is_dir()):
        return "its blobs/ is not a plain directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=".superollama-probe-", dir=path)
    except OSError as exc:
        return f"it is not writable ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


class StorageRoots:
    """The home plus the declared roots; ``resolve`` turns a client's ``to`` into one usable root."""

    def __init__(self, home: Path, declared: Iterable[tuple[str | None, str]] = ()) -> None:
        self.home = Path(os.path.realpath(home))
        self._declared = [(name or path, path) for name, path in declared]

    def _root(self, name: str, declared: str) -> StorageRoot:
        path = Path(os.path.realpath(declared))
        return StorageRoot(name, path, declared, problem=root_problem(path, self.home))

    def home_root(self) -> StorageRoot:
        return StorageRoot(HOME_ROOT, self.home, str(self.home), is_home=True)

    def all(self) -> list[StorageRoot]:
        """The home first, then the declared roots in their order, each checked now (blocking)."""
        return [self.home_root(), *(self._root(name, path) for name, path in self._declared)]

    def declared_paths(self) -> set[Path]:
        """The real paths of the declared roots (without checking them)."""
        return {Path(os.path.realpath(path)) for _name, path in self._declared}

    def name_of(self, location: Path | None) -> str:
        """The name of the root a manifest's ``storage_root`` points at (its path if undeclared now)."""
        if location is None:
            return HOME_ROOT
        for name, path in self._declared:
            if Path(os.path.realpath(path)) == location:
                return name
        return str(location)

    def resolve(self, to: str) -> StorageRoot:
        """The usable root that ``to`` names: ``home``, a declared name, or a root's exact path
        (absolute; compared after ``realpath``). Anything else is ``InvalidRequest`` listing the valid
        roots (blocking: checks the root)."""
        to = to.strip()
        roots = self.all()
        match: StorageRoot | None = None
        for root in roots:
            if to == root.name:
                match = root
        if match is None and to.startswith("/"):
            real = Path(os.path.realpath(to))
            match = next((root for root in roots if root.path == real), None)
        if match is None:
            if to.startswith("/"):
                why = f"{to!r} is not a storage root"
            else:
                why = f"{to!r} is neither a storage root's name nor an absolute path"
            raise InvalidRequest(f"{why}; {_valid(roots)}", param="to")
        if match.problem is not None:
            raise InvalidRequest(
                f"storage root {match.name!r} ({match.declared}) cannot be used: {match.problem}; "
                f"{_valid(roots)}",
                param="to",
            )
        return match


def _valid(roots: list[StorageRoot]) -> str:
    usable = [f"{r.name} ({r.path})" if r.name != str(r.path) else r.name for r in roots if r.usable]
    hint = " (declare more with SUPEROLLAMA_STORAGE_ROOTS)" if len(usable) == 1 else ""
    return "valid roots: " + ", ".join(usable) + hint
