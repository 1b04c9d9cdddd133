"""Folders and files named by fsspec URLs (`file://`, `memory://`, `gs://`, `s3://`, ...).

A plain path is read as before, with `pathlib`; a name with a scheme (`PROTOCOL://...`) goes
through `fsspec`: text sources are read from it, and token shards are written to it (each
shard uploaded once final, as one object) and read from it through a local read-through
cache (`cache_dir()`), so the loader still memory-maps local files. `gs://` needs `gcsfs`,
`s3://` needs `s3fs` (not dependencies of theseus).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from theseus.config import ConfigError


def is_url(name: str | os.PathLike) -> bool:
    """Whether `name` is an fsspec URL (`PROTOCOL://...`) rather than a plain path."""
    return "://" in str(name)


def cache_dir() -> Path:
    """Where remote shards are cached and remote tokenize jobs stage their shards:
    `$THESEUS_CACHE`, else `~/.cache/theseus`."""
    return Path(os.environ.get("THESEUS_CACHE") or Path.home() / ".cache" / "theseus").expanduser()


class RemoteFolder:
    """A folder named by an fsspec URL: `RemoteFolder("gs://bucket/shards").read_text("metadata.json")`."""

    def __init__(self, url: str, what: str = "data/source"):
        self.url = str(url).rstrip("/")
        try:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as error:  # e.g. gs:// without gcsfs
            raise ConfigError(f"{what}: cannot open {self.url}: {error}") from None

    def path(self, name: str = "") -> str:
        return posixpath.join(self.root, name) if name else self.root

    def url_of(self, name: str) -> str:
        return f"{self.url}/{name}"

    def is_file(self, name: str = "") -> bool:
        return self.fs.isfile(self.path(name))

    def is_dir(self, name: str = "") -> bool:
        return self.fs.isdir(self.path(name))

    def size(self, name: str) -> int:
        return self.fs.size(self.path(name)) if self.is_file(name) else -1

    def read_text(self, name: str) -> str:
        return self.fs.cat_file(self.path(name)).decode()

    def write_text(self, name: str, text: str) -> None:
        """One object written whole (an object store shows it only once complete)."""
        self.fs.pipe_file(self.path(name), text.encode())

    def put(self, local: Path, name: str) -> None:
        """Upload local file `local` as `name`."""
        parent = posixpath.dirname(self.path(name))
        if not self.fs.exists(parent):
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.put_file(str(local), self.path(name))

    def remove(self, name: str) -> None:
        if self.fs.exists(self.path(name)):
            self.fs.rm_file(self.path(name))

    def files(self, name: str = "", suffixes: tuple[str, ...] = ()) -> list[str]:
        """The files under `name`, as paths relative to this folder, sorted."""
        if not self.is_dir(name):
            return []
        found = self.fs.find(self.path(name))
        relative = [posixpath.relpath(self.fs._strip_protocol(f), self.root) for f in found]
        return sorted(r for r in relative if r.lower().endswith(suffixes or ("",)))

    def fetch(self, name: str, sha256: str | None, size: int) -> Path:
        """A local copy of `name` (read through the cache; a shard whose bytes do not hash to
        `sha256` is refused): cached by its checksum, so a second open downloads nothing."""
        key = sha256 or hashlib.sha256(self.url_of(name).encode()).hexdigest()
        local = cache_dir() / "shards" / key[:2] / f"{key}.bin"
        if local.is_file() and local.stat().st_size == size:
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
        digest = hashlib.sha256()
        with self.fs.open(self.path(name), "rb") as source, open(tmp, "wb") as target:
            while block := source.read(1 << 24):
                digest.update(block)
                target.write(block)
        if sha256 is not None and digest.hexdigest() != sha256:
            tmp.unlink()
            raise ConfigError(
                f"token shard {self.url_of(name)} is damaged: its SHA-256 is {digest.hexdigest()[:16]}..., "
                f"metadata.json says {sha256[:16]}... (it changed after data/tokenize wrote it); restore it or "
                "make the shards again with data/tokenize"
            )
        os.replace(tmp, local)
        return local


@contextmanager
def open_binary(path: str | Path) -> Any:
    """`path` (a plain path or an fsspec URL) opened for reading bytes, a `.gz` file decompressed."""
    gzipped = str(path).lower().endswith(".gz")
    if is_url(path):
        import fsspec

        with fsspec.open(str(path), "rb", compression="gzip" if gzipped else None) as f:
            yield f
        return
    if gzipped:
        import gzip

        with gzip.open(path, "rb") as f:
            yield f
        return
    with open(path, "rb") as f:
        yield f
