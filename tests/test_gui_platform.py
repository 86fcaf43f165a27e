"""`python -m gui` names the missing xcb libraries and the install command instead of letting
Qt abort the process (checked with a fake loader that misses a library)."""

from __future__ import annotations

import sys

import pytest

import gui.__main__ as gui_main


@pytest.fixture
def on_linux_xcb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)


def _missing(*names: str):
    return lambda library: library not in names


def test_missing_library_is_named_with_the_apt_command(
        on_linux_xcb: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(gui_main.shutil, "which", lambda cmd: "/usr/bin/apt-get"
                        if cmd == "apt-get" else None)
    monkeypatch.setattr(gui_main, "_loads", _missing("libxcb-cursor.so.0", "libxcb-xkb.so.1"))
    assert gui_main.main([]) == 2
    err = capsys.readouterr().err
    assert "libxcb-cursor.so.0, libxcb-xkb.so.1" in err
    assert "sudo apt-get install libxcb-cursor0 libxcb-xkb1\n" in err
    assert err.count("error:") == 1


def test_dnf_command_on_fedora(on_linux_xcb: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gui_main.shutil, "which", lambda cmd: "/usr/bin/dnf"
                        if cmd == "dnf" else None)
    problem = gui_main.xcb_problem(_missing("libxcb-shape.so.0", "libxcb-randr.so.0"))
    assert problem is not None and "sudo dnf install libxcb\n" in problem


def test_no_check_off_xcb_or_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    nothing = _missing(*(lib for lib, _d, _r in gui_main.XCB_LIBRARIES))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert gui_main.xcb_problem(nothing) is None
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    assert gui_main.xcb_problem(nothing) is not None
    monkeypatch.setattr(sys, "platform", "win32")
    assert gui_main.xcb_problem(nothing) is None


def test_the_real_loader_finds_a_present_library_and_not_a_fake_one() -> None:
    assert gui_main._loads("libc.so.6")
    assert not gui_main._loads("libxcb-no-such-library.so.0")
