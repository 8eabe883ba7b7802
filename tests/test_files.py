"""Atomic writes: the old file survives a failed write, no temporary file is left, the mode follows the umask."""

import os

import pytest

from cnnlab.files import atomic_write, write_json, write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.txt"
    write_text(target, "old")

    def broken(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_written_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert path.read_text() == '{\n  "x": 1\n}\n'


def test_unwritable_places_are_one_line_user_errors(tmp_path):
    from cnnlab.errors import CnnlabError

    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    with pytest.raises(CnnlabError, match="cannot write .*a-file/x.png"):
        write_text(blocker / "x.png", "data")
    with pytest.raises(CnnlabError, match="it is a folder"):
        write_text(tmp_path, "data")
    assert blocker.read_text() == "mine"


def test_a_write_that_need_not_be_durable_skips_the_fsyncs_only(tmp_path, monkeypatch):
    from cnnlab import files

    synced = []
    monkeypatch.setattr(files, "fsync_file", lambda p: synced.append("file"))
    monkeypatch.setattr(files, "fsync_dir", lambda p: synced.append("dir"))
    files.write_bytes(tmp_path / "a.bin", b"one")
    assert synced == ["file", "dir"]
    files.write_json(tmp_path / "b.json", {"x": 1}, durable=False)
    files.write_bytes(tmp_path / "a.bin", b"two", durable=False)
    assert synced == ["file", "dir"]  # none more
    assert (tmp_path / "a.bin").read_bytes() == b"two" and (tmp_path / "b.json").read_text() == '{\n  "x": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json"]  # no temporary file left
