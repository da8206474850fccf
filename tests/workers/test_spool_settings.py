"""The worker's spool settings: where, how big, off; and a spool that cannot be used."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest

from registry.envconfig import ConfigError
from workers.settings import WorkerSettings
from workers.spool import open_spool


def test_the_spool_defaults_to_a_directory_of_this_user_under_the_temporary_directory() -> None:
    settings = WorkerSettings.from_env({})
    assert settings.spool_dir == str(Path(tempfile.gettempdir()) / f"fanout-spool-{os.getuid()}")
    assert settings.spool_bytes == 2 * 1024**3


def test_the_spool_is_set_by_directory_and_size(tmp_path: Path) -> None:
    settings = WorkerSettings.from_env({"FANOUT_SPOOL_DIR": str(tmp_path / "s"),
                                        "FANOUT_SPOOL_BYTES": "512M"})
    assert (settings.spool_dir, settings.spool_bytes) == (str(tmp_path / "s"), 512 * 1024**2)
    spool = open_spool(settings)
    assert spool is not None and spool.store.root == tmp_path / "s"


def test_zero_bytes_turns_the_spool_off(tmp_path: Path) -> None:
    settings = WorkerSettings.from_env({"FANOUT_SPOOL_DIR": str(tmp_path / "s"),
                                        "FANOUT_SPOOL_BYTES": "0"})
    assert open_spool(settings) is None
    assert not (tmp_path / "s").exists()


def test_a_size_that_is_not_one_fails_the_worker_at_start() -> None:
    with pytest.raises(ConfigError, match="FANOUT_SPOOL_BYTES"):
        WorkerSettings.from_env({"FANOUT_SPOOL_BYTES": "lots"})


def test_a_directory_others_may_write_means_no_spool_and_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="fanout.worker"):
        assert open_spool(WorkerSettings.from_env({"FANOUT_SPOOL_DIR": str(shared)})) is None
    assert "no spool" in caplog.text
