"""``--data-dir`` persistence: a snapshot plus an append-only journal of committed changes.

A real Consul server writes every Raft entry to disk before answering, so a restarted server keeps
its KV, sessions and indexes. We do the same at the cost of one buffered ``write`` per commit: each
committed transaction is one JSON line, flushed before the client gets its answer, so a SIGKILL
loses nothing that was acknowledged (the OS still holds the bytes). The journal is folded into a new
snapshot on clean shutdown and whenever it grows past ``compact_after`` lines.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from .store import Changes, Store, Tables, changes_record

SNAPSHOT = "state.json"
JOURNAL = "journal.jsonl"


class DataDir:
    """Loads a store from a directory and keeps the directory in step with the store."""

    def __init__(self, path: str | os.PathLike[str], compact_after: int = 50_000) -> None:
        self.path = Path(path)
        self.compact_after = compact_after
        self._journal: TextIO | None = None
        self._lines = 0
        self._store: Store | None = None

    def open(self, store: Store) -> None:
        """Load existing state into ``store`` and start journaling its commits."""
        self.path.mkdir(parents=True, exist_ok=True)
        snapshot_file = self.path / SNAPSHOT
        snapshot = json.loads(snapshot_file.read_text()) if snapshot_file.exists() else None
        store.load(snapshot, self._read_journal())
        self._store = store
        self._write_snapshot()
        store.on_commit = self.record

    def _read_journal(self) -> list[dict[str, Any]]:
        """Journal lines in order; a torn last line (killed mid-write) is ignored."""
        journal_file = self.path / JOURNAL
        if not journal_file.exists():
            return []
        records = []
        for line in journal_file.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return records

    def record(self, changes: Changes, tables: Tables) -> None:
        """Append one committed transaction and flush it before the request is answered."""
        line = json.dumps(
            {"tables": asdict(tables), **changes_record(changes)}, separators=(",", ":")
        )
        assert self._journal is not None  # open() made it before setting on_commit
        self._journal.write(line + "\n")
        self._journal.flush()
        self._lines += 1
        if self._lines >= self.compact_after:
            self._write_snapshot()

    def _write_snapshot(self) -> None:
        """Write the whole state atomically (temp file + rename), then start an empty journal."""
        tmp = self.path / (SNAPSHOT + ".tmp")
        assert self._store is not None  # set by open() before any snapshot is written
        tmp.write_text(json.dumps(self._store.snapshot(), separators=(",", ":")))
        os.replace(tmp, self.path / SNAPSHOT)
        if self._journal is not None:
            self._journal.close()
        self._journal = open(self.path / JOURNAL, "w", encoding="utf-8")  # noqa: SIM115
        self._lines = 0

    def close(self) -> None:
        if self._store is not None and self._journal is not None:
            self._write_snapshot()
            self._journal.close()
            self._journal = None
