"""The local backend: sources under the media root, outputs under the output root (today's behaviour, the
default, and what `cliplog dev` uses). Every file-system call runs in a thread, off the event loop."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator

from runtime.files import atomic_file
from runtime.media import resolve_inside
from storage.base import ObjectMissing, StorageUnavailable, StoredObject
from storage.keys import source_key_problem

CHUNK = 256 * 1024
TEMP_PREFIX = ".tmp-"  # the worker's temporary cuts beside the outputs (never listed as outputs)


def _stored(key: str, stat: os.stat_result) -> StoredObject:
    # A strong validator that changes whenever the file does (as the API's file route has always made it).
    return StoredObject(
        key=key,
        size=stat.st_size,
        etag=f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"',
        modified=datetime.fromtimestamp(stat.st_mtime, timezone.utc),
    )


def _read(path: Path, start: int, length: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(start)
        return handle.read(length)


class LocalStorage:
    backend = "local"

    def __init__(self, media_root: Path, output_root: Path) -> None:
        self.media_root = media_root
        self.output_root = output_root

    # sources --------------------------------------------------------------------------------------------------

    def source_path(self, key: str) -> Path:
        """The file a source key names (a regular file inside the media root), else ObjectMissing. Blocking."""
        path = None if source_key_problem(key) else resolve_inside(self.media_root, key)
        if path is None:
            raise ObjectMissing(f"The source video {key!r} does not exist in the media folder.")
        return path

    async def ping(self) -> None:
        if not await asyncio.to_thread(self.media_root.is_dir):
            raise StorageUnavailable(f"The media folder {self.media_root} does not exist.")

    async def head_source(self, key: str) -> StoredObject:
        def head() -> StoredObject:
            return _stored(key, self.source_path(key).stat())

        return await asyncio.to_thread(head)

    async def read_source(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        path = await asyncio.to_thread(self.source_path, key)
        async for chunk in _read_chunks(path, start, length):
            yield chunk

    async def source_input(self, key: str, expires_seconds: float) -> str:
        return str(await asyncio.to_thread(self.source_path, key))

    async def list_sources(self, after: str | None, limit: int) -> list[StoredObject]:
        return await asyncio.to_thread(self._list_sources, after, limit)

    def _list_sources(self, after: str | None, limit: int) -> list[StoredObject]:
        """Regular files under the media root, hidden files and folders left out, by key. Blocking."""
        found: list[StoredObject] = []
        if not self.media_root.is_dir() or limit <= 0:
            return found
        keys: list[str] = []
        for folder, subfolders, names in os.walk(self.media_root):
            subfolders[:] = [d for d in subfolders if not d.startswith(".")]
            for name in names:
                if not name.startswith("."):
                    key = (Path(folder) / name).relative_to(self.media_root).as_posix()
                    if after is None or key > after:
                        keys.append(key)
        for key in sorted(keys):
            path = resolve_inside(self.media_root, key)  # a regular file, not a link out of the root
            if path is None or source_key_problem(key):
                continue
            try:
                found.append(_stored(key, path.stat()))
            except FileNotFoundError:
                continue
            if len(found) >= limit:
                break
        return found

    # outputs --------------------------------------------------------------------------------------------------

    def output_path(self, name: str) -> Path:
        return self.output_root / name

    async def put_output(self, local_path: Path, name: str) -> StoredObject:
        def publish() -> StoredObject:
            final = self.output_path(name)
            final.parent.mkdir(parents=True, exist_ok=True)
            size = local_path.stat().st_size
            try:
                fd = os.open(local_path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(local_path, final)  # the worker cuts beside the outputs: a rename
            except OSError as error:
                if error.errno != errno.EXDEV:
                    raise
                with local_path.open("rb") as source, atomic_file(final) as target:
                    shutil.copyfileobj(source, target, CHUNK)
            stat = final.stat()
            if stat.st_size != size:
                raise StorageUnavailable(f"The output {name} in the output folder has {stat.st_size} bytes, not {size}.")
            return _stored(name, stat)

        return await asyncio.to_thread(publish)

    async def head_output(self, name: str) -> StoredObject:
        def head() -> StoredObject:
            path = resolve_inside(self.output_root, name)
            if path is None:
                raise ObjectMissing(f"The output {name!r} does not exist in the output folder.")
            return _stored(name, path.stat())

        return await asyncio.to_thread(head)

    async def read_output(self, name: str, start: int, length: int) -> AsyncIterator[bytes]:
        path = await asyncio.to_thread(resolve_inside, self.output_root, name)
        if path is None:
            raise ObjectMissing(f"The output {name!r} does not exist in the output folder.")
        async for chunk in _read_chunks(path, start, length):
            yield chunk

    async def output_url(self, name: str, expires_seconds: float) -> str:
        raise NotImplementedError("the local backend serves its files itself")

    async def delete_output(self, name: str) -> None:
        await asyncio.to_thread(self.output_path(name).unlink, missing_ok=True)

    async def list_outputs(self) -> AsyncIterator[StoredObject]:
        for item in await asyncio.to_thread(self._list_outputs):
            yield item

    def _list_outputs(self) -> list[StoredObject]:
        """Files one folder down the output root (`<project>/<name>`), temporaries left out. Blocking."""
        found: list[StoredObject] = []
        if not self.output_root.is_dir():
            return found
        for path in self.output_root.glob("*/*"):
            if path.name.startswith(TEMP_PREFIX) or not path.is_file():
                continue
            try:
                found.append(_stored(path.relative_to(self.output_root).as_posix(), path.stat()))
            except FileNotFoundError:
                continue
        return found

    async def close(self) -> None:
        return None


async def _read_chunks(path: Path, start: int, length: int) -> AsyncIterator[bytes]:
    position, end = start, start + length
    while position < end:
        chunk = await asyncio.to_thread(_read, path, position, min(CHUNK, end - position))
        if not chunk:
            return
        yield chunk
        position += len(chunk)
