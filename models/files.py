"""Files, as OpenAI's Files API has them: batch input files and batch output files.

The bytes live on disk, one file per id under `GENQ_FILES_DIR`; the table holds what the API
shows (name, size, purpose) and where the bytes are. They are never read whole into memory: an
upload is written as it streams in, content is served in chunks, and output files are written
line by line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal

from sqlalchemy import DateTime, Index
from sqlmodel import Field, Session, SQLModel, col, select

from models.batch_schemas import FilePublic
from models.db import utcnow
from models.errors import FileNotFound
from models.keys import ApiKey  # noqa: F401  (the table files.key_id points at)
from models.settings import get_settings

FilePurpose = Literal["batch", "batch_output"]
PURPOSES: tuple[str, ...] = ("batch", "batch_output")
PROCESSED = "processed"
#: content is streamed in pieces of this size
CHUNK_BYTES = 1 << 20


def new_file_id() -> str:
    """`file-` and 24 hex digits, the shape of OpenAI's ids."""
    return "file-" + secrets.token_hex(12)


class StoredFile(SQLModel, table=True):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_key_created", "key_id", "created_at", "id"),)

    id: str = Field(default_factory=new_file_id, primary_key=True, max_length=64)
    key_id: str = Field(foreign_key="api_keys.id", max_length=32)
    purpose: str = Field(max_length=32)
    filename: str = Field(max_length=512)
    bytes: int = 0
    status: str = Field(default=PROCESSED, max_length=16)
    #: where the bytes are, as written (absolute)
    path: str = Field(max_length=1024)
    created_at: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


def file_path(directory: Path, file_id: str) -> Path:
    """Where a file's bytes go: the id names it, so a client's filename never reaches the disk."""
    directory.mkdir(parents=True, exist_ok=True)
    return (directory / file_id).resolve()


def create_file(
    session: Session,
    *,
    file_id: str,
    key_id: str,
    filename: str,
    purpose: str,
    path: Path,
    size: int,
) -> StoredFile:
    """Record a file whose bytes were written at `path` already."""
    stored = StoredFile(
        id=file_id, key_id=key_id, purpose=purpose, filename=filename, bytes=size, path=str(path)
    )
    session.add(stored)
    session.flush()
    return stored


def get_file(session: Session, *, file_id: str, key_id: str) -> StoredFile:
    """The file as `key_id` sees it: another key's file does not exist for it."""
    stored = session.get(StoredFile, file_id)
    if stored is None or stored.key_id != key_id:
        raise FileNotFound(f"no file with id {file_id!r}")
    return stored


def list_files(
    session: Session,
    *,
    key_id: str,
    purpose: str | None = None,
    limit: int = 10_000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> tuple[list[StoredFile], bool]:
    """The key's files by creation time (newest first by default); whether more follow."""
    query = select(StoredFile).where(StoredFile.key_id == key_id)
    if purpose:
        query = query.where(StoredFile.purpose == purpose)
    created, ident = col(StoredFile.created_at), col(StoredFile.id)
    if after:
        mark = get_file(session, file_id=after, key_id=key_id)
        if order == "desc":
            query = query.where(
                (created < mark.created_at) | ((created == mark.created_at) & (ident < mark.id))
            )
        else:
            query = query.where(
                (created > mark.created_at) | ((created == mark.created_at) & (ident > mark.id))
            )
    ordering = (created.desc(), ident.desc()) if order == "desc" else (created, ident)
    rows = list(session.exec(query.order_by(*ordering).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def delete_file(session: Session, *, file_id: str, key_id: str) -> StoredFile:
    """Forget the file (a batch that used it keeps its own record); once this commits, the
    caller removes its bytes with `remove_content`."""
    stored = get_file(session, file_id=file_id, key_id=key_id)
    session.delete(stored)
    session.flush()
    return stored


def remove_content(stored: StoredFile) -> None:
    """Remove a deleted file's bytes from disk."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(stored.path)


def open_file_content(stored: StoredFile) -> BinaryIO:
    """The file's bytes for reading (the caller closes it)."""
    try:
        return open(stored.path, "rb")
    except FileNotFoundError:
        raise FileNotFound(f"the content of file {stored.id!r} is gone") from None


def iter_content(stored: StoredFile) -> Iterator[bytes]:
    """The file's bytes in chunks, for a streaming response."""
    with open_file_content(stored) as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


def store_output_file(
    session: Session,
    *,
    key_id: str,
    filename: str,
    purpose: str,
    lines: Iterable[bytes],
    directory: Path | None = None,
) -> StoredFile:
    """Write `lines` (JSON lines; a missing newline is added) to a new file and record it, under
    `directory` (default: GENQ_FILES_DIR)."""
    file_id = new_file_id()
    path = file_path(directory or get_settings().files_dir, file_id)
    size = 0
    with open(path, "wb") as handle:
        for line in lines:
            if not line.endswith(b"\n"):
                line += b"\n"
            handle.write(line)
            size += len(line)
    return create_file(
        session,
        file_id=file_id,
        key_id=key_id,
        filename=filename,
        purpose=purpose,
        path=path,
        size=size,
    )


def file_public(stored: StoredFile) -> FilePublic:
    """OpenAI's FileObject."""
    return FilePublic(
        id=stored.id,
        bytes=stored.bytes,
        created_at=unix(stored.created_at) or 0,
        filename=stored.filename,
        purpose=stored.purpose,
        status=stored.status,
    )


def unix(moment: datetime | None) -> int | None:
    """OpenAI's timestamps: whole seconds since the epoch (SQLite's naive datetimes are UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())
