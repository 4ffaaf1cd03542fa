"""Atomic folder replacement through symbolic links, and JSON that nests too deeply."""

from __future__ import annotations

import pytest

from keras_digits.errors import KerasDigitsError
from keras_digits.utils.io import read_json_object, replace_dir


def test_replace_dir_through_a_link_replaces_its_folder_and_keeps_the_link(tmp_path):
    real = tmp_path / "store" / "out"
    real.mkdir(parents=True)
    (real / "old.txt").write_text("old")
    link = tmp_path / "out"
    link.symlink_to(real, target_is_directory=True)
    new = tmp_path / ".out.tmp"
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_dir(new, link)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert sorted(p.name for p in real.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "store"]  # no .out.old-PID left behind
    assert sorted(p.name for p in real.parent.iterdir()) == ["out"]


def test_deeply_nested_json_is_one_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(KerasDigitsError, match="nested too deeply"):
        read_json_object(path)
    assert read_json_object(path, lenient=True) == {}


def test_a_sweeps_recorded_command_leaves_out_how_workers_were_spread():
    from keras_digits.studies.sweep import without_worker_flags

    argv = ["--vary", "lr=0.1,0.01", "--worker-wait", "30", "--worker-timeout=60", "--epochs", "1", "--worker-wait=5"]
    assert without_worker_flags(argv) == ["--vary", "lr=0.1,0.01", "--epochs", "1"]
