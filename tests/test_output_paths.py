"""A file or folder that a user names for output is checked before any work, and the check leaves nothing behind."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from cli_checks import assert_refused, invoke

from rql_cli.cli.common import check_output_path
from rql_cli.errors import RQLError

linux_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be made")


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_file_in_folders_yet_to_be_made_passes_and_nothing_is_made(tmp_path):
    check_output_path(tmp_path / "a" / "b" / "report.json", "--json")
    check_output_path(tmp_path / "new-folder" / "inner", "--out", folder=True)
    assert listing(tmp_path) == []


def test_an_existing_file_passes_untouched(tmp_path):
    target = tmp_path / "video.mp4"
    target.write_bytes(b"old frames")
    check_output_path(target, "--out")
    assert target.read_bytes() == b"old frames" and listing(tmp_path) == ["video.mp4"]


def test_a_folder_where_a_file_belongs_is_refused_with_an_example_name(tmp_path):
    with pytest.raises(RQLError, match=r"--json .* is a folder; give a file name, e\.g\. .*report\.json"):
        check_output_path(tmp_path, "--json", example="report.json")


def test_a_file_where_a_folder_belongs_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(RQLError, match="is a file; it needs a folder"):
        check_output_path(tmp_path / "notes.txt", "--out", folder=True)


def test_a_path_below_a_file_is_refused_naming_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(RQLError, match=r"cannot be written: .*notes\.txt is a file, not a folder"):
        check_output_path(tmp_path / "notes.txt" / "sub" / "v.mp4", "--out")
    assert listing(tmp_path) == ["notes.txt"]


@linux_proc
def test_a_folder_where_no_file_can_be_made_is_refused():
    with pytest.raises(RQLError, match=r"--out /proc/nope\.mp4 cannot be written: a test file in /proc failed"):
        check_output_path(Path("/proc/nope.mp4"), "--out")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root may write a read-only file")
def test_a_read_only_file_is_refused(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("{}")
    target.chmod(0o444)
    with pytest.raises(RQLError, match="exists and is read-only"):
        check_output_path(target, "--json")


@linux_proc
def test_rollout_refuses_an_unwritable_video_before_loading_the_checkpoint():
    # The checkpoint does not exist: a refusal that names --out came before any loading.
    assert_refused(invoke("rollout", "--checkpoint", "no-such-checkpoint", "--render", "--out", "/proc/nope.mp4"),
                   "--out /proc/nope.mp4 cannot be written", "Choose another --out")


def test_eval_checks_its_json_path_without_making_it(tmp_path):
    target = tmp_path / "reports" / "new" / "report.json"
    assert_refused(invoke("eval", "--checkpoint", "no-such-checkpoint", "--json", str(target)), "No checkpoint")
    assert listing(tmp_path) == []
    (tmp_path / "afile").write_text("x")
    assert_refused(invoke("eval", "--checkpoint", "no-such-checkpoint", "--json", str(tmp_path / "afile" / "r.json")),
                   "--json", "afile is a file, not a folder")


@linux_proc
def test_data_generate_refuses_an_unwritable_folder_before_collecting():
    assert_refused(invoke("data", "generate", "cube-single-play-v0", "--episodes", "1", "--val-episodes", "1",
                          "--workers", "1", "--out", "/proc/nope"),
                   "--out /proc/nope cannot be written")


def test_demo_refuses_a_file_as_its_folder_before_anything_runs(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert_refused(invoke("demo", "--out", str(tmp_path / "notes.txt")), "--out", "is a file; it needs a folder")
    assert listing(tmp_path) == ["notes.txt"]
