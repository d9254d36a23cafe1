"""Stage files (`OUT/stages/*.pt`) resume `rt3c prune` and `rt3c search`; the search stage pickles its logs by
class path, so a file written before the stages moved to `rt3c.stages` (issue 17) must still load."""

from __future__ import annotations

from pathlib import Path

import torch

from rt3c.stages.prune.stages import StageFiles
from rt3c.stages.search.controller import SearchLog


def _write_with_old_module_paths(path: Path, record: dict) -> None:
    """`record` saved as before the move: torch's legacy format is one plain pickle stream (protocol 2 names a
    class as `module\\nname\\n`), so renaming the module in its bytes is what an old file holds."""
    torch.save(record, path, _use_new_zipfile_serialization=False)
    saved = path.read_bytes()
    assert b"rt3c.stages.search.controller\n" in saved
    path.write_bytes(saved.replace(b"rt3c.stages.search.controller\n", b"rt3c.search.controller\n"))


def test_a_search_stage_saved_before_the_move_loads_without_running_again(tmp_path: Path) -> None:
    files = StageFiles(tmp_path)
    settings = {"episodes": 3}
    _write_with_old_module_paths(
        files.path("search"), {"settings": settings, "payload": {"logs": {"random": SearchLog("random")}}}
    )

    def must_not_run() -> object:
        raise AssertionError("the stage ran again instead of loading its file")

    payload = files.run("search", settings, None, must_not_run)
    assert isinstance(payload, dict)
    assert payload["logs"]["random"] == SearchLog("random")


def test_a_stage_file_with_other_settings_runs_the_stage_again(tmp_path: Path) -> None:
    files = StageFiles(tmp_path)
    files.run("search", {"episodes": 3}, None, lambda: "first")
    assert files.run("search", {"episodes": 4}, None, lambda: "second") == "second"
    assert files.run("search", {"episodes": 4}, None, lambda: "third") == "second"
