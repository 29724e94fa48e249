"""The back-pressure shared by this user's processes on a host: a file of the user's own, never
followed through a link, and nothing at all without a temporary directory."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest

from consulresults.pressure import HostPressure


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_a_refusal_is_felt_by_another_process_of_the_user(tmp):
    told = HostPressure("agent:8500", 10.0)
    assert told.felt() == 0.0
    told.refused()
    assert HostPressure("agent:8500", 10.0).felt() > 0.0  # another process's view
    assert stat.S_IMODE(os.stat(told.path).st_mode) == 0o600
    assert HostPressure("another-agent:8500", 10.0).felt() == 0.0


def test_a_link_planted_in_its_place_is_neither_followed_nor_felt(tmp):
    victim = tmp / "victim"
    told = HostPressure("agent:8500", 10.0)
    os.symlink(victim, told.path)
    told.refused()
    assert not victim.exists()  # nothing created through the link
    victim.write_text("")  # a file of the user's that changes often
    assert HostPressure("agent:8500", 10.0).felt() == 0.0


def test_without_a_temporary_directory_nothing_is_shared(monkeypatch):
    def none() -> str:
        raise FileNotFoundError("No usable temporary directory found")

    monkeypatch.setattr(tempfile, "gettempdir", none)
    pressure = HostPressure("agent:8500", 10.0)
    pressure.refused()
    assert pressure.path is None and pressure.felt() == 0.0
