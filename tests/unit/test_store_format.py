"""Store format versions: a store says which format it is in, a store of a newer format is
refused with the versions and the fix, and older releases' stores open and are upgraded."""

from __future__ import annotations

import tomllib
from pathlib import Path

import plyvel
import pytest
from helpers import REPO

from dyno_stream import __version__
from dyno_stream.core.errors import StoreFormatError
from dyno_stream.core.events import make_op
from dyno_stream.core.flake import new_flake
from dyno_stream.store import DynoStore
from dyno_stream.store.partition import PartitionStore
from dyno_stream.store.states import RELEASE_KEY, STORE_FORMAT, VERSION_KEY


def _rows(path: Path) -> dict[bytes, bytes]:
    db = plyvel.DB(str(path))
    try:
        return dict(db.iterator())
    finally:
        db.close()


def _put(path: Path, rows: dict[bytes, bytes | None]) -> None:
    db = plyvel.DB(str(path))
    try:
        for key, value in rows.items():
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)
    finally:
        db.close()


def _store_with_an_item(path: Path) -> None:
    with DynoStore(path) as store:
        store.apply([make_op("putAttrs", "thing", {"a": 1}, new_flake())])


def test_a_new_store_records_its_format_and_release(tmp_path: Path) -> None:
    _store_with_an_item(tmp_path / "s")
    rows = _rows(tmp_path / "s")
    assert rows[VERSION_KEY] == str(STORE_FORMAT).encode()
    assert rows[RELEASE_KEY] == __version__.encode()


def test_a_store_of_a_newer_format_is_refused_naming_versions_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _store_with_an_item(path)
    newer = str(STORE_FORMAT + 1).encode()
    _put(path, {VERSION_KEY: newer, RELEASE_KEY: b"9.9.9"})
    before = _rows(path)
    with pytest.raises(StoreFormatError) as caught:
        DynoStore(path)
    msg = str(caught.value)
    assert f"store of format {STORE_FORMAT + 1}" in msg
    assert "written by dyno-stream 9.9.9" in msg
    assert f"dyno-stream {__version__}" in msg
    assert f"up to {STORE_FORMAT}" in msg
    assert "restores the partition from the snapshot topic" in msg
    assert _rows(path) == before  # not a byte changed, and the lock is released
    # a partition's store is refused the same way (the worker opens them so)
    part = tmp_path / "data" / "ops" / "0000"
    part.parent.mkdir(parents=True)
    path.rename(part)
    with pytest.raises(StoreFormatError, match=r"written by dyno-stream 9\.9\.9"):
        PartitionStore.open(tmp_path / "data", "ops", 0, sync=False)


def test_a_newer_format_without_the_release_row_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _store_with_an_item(path)
    _put(path, {VERSION_KEY: b"7", RELEASE_KEY: None})
    with pytest.raises(StoreFormatError, match="format 7, written by a newer release"):
        DynoStore(path)


@pytest.mark.parametrize("raw", [b"", b"two", b"0", b"-1", b"\xff"])
def test_a_format_row_that_is_not_a_version_is_refused(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "s"
    _store_with_an_item(path)
    _put(path, {VERSION_KEY: raw})
    with pytest.raises(StoreFormatError, match="is not a format version"):
        DynoStore(path)


def test_a_store_an_older_release_wrote_opens_and_is_upgraded(tmp_path: Path) -> None:
    """0.1.0 wrote the format row but not the release row: it opens, reads as it was, and
    says from then on which release opened it."""
    path = tmp_path / "s"
    _store_with_an_item(path)
    _put(path, {RELEASE_KEY: None})
    with DynoStore(path) as store:
        item = store.get_item("thing")
        assert item.value == {"a": 1} and item.changes == 1
    rows = _rows(path)
    assert rows[RELEASE_KEY] == __version__.encode()
    assert rows[VERSION_KEY] == str(STORE_FORMAT).encode()


def test_changelog_names_the_store_format_of_this_release() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    text = (REPO / "CHANGELOG.md").read_text()
    _, _, rest = text.partition(f"## {version} - ")
    assert rest, f"CHANGELOG.md has no entry for {version}"
    entry = rest.split("\n## ", 1)[0]
    assert f"Store format: {STORE_FORMAT}." in entry
