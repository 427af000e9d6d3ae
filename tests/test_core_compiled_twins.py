"""The piece picker and the download loop, compiled (Cython's pure mode, setup.py
PURE_MODE) and as Python: the same answers to the same events, bit for bit.

The compiled modules are built from the Python source itself, typed by a .pxd; what
could differ is what the types change: C doubles for times (the same bits as Python
floats, unless the compiler contracts a multiply-add), C integers for counts, and the
order of the random draws. Each test drives one object of each backend through the same
seeded random sequence of events and compares every answer and the generator's state.
A build made from another version of the source is not used (the digest check).
"""

from __future__ import annotations

import math
import random
import warnings

import pytest

from d7y import ext
from d7y.core.scheduling import _download_py, _picker_py
from tests.conftest import import_built, loop_backends


@pytest.fixture
def built(monkeypatch):
    """(bitmaps, picker, download) as built: the builds' fields are typed as the
    compiled kernel's Bitmap."""
    return loop_backends("c", monkeypatch)


@pytest.fixture
def python(monkeypatch):
    """(bitmaps, picker, download) in Python throughout."""
    return loop_backends("py", monkeypatch)


def _bitmap(bitmaps, rng: random.Random, size: int, density: float):
    bm = bitmaps.Bitmap(size)
    for i in range(size):
        if rng.random() < density:
            bm.set(i)
    return bm


def _plain(value):
    """An answer as plain data: actions and failures as (class name, fields)."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return (type(value).__name__, *(_plain(v) for v in value))
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _mentions(record, name: str) -> bool:
    """Whether an action or failure named ``name`` is anywhere in ``record``."""
    if isinstance(record, tuple) and record and record[0] == name:
        return True
    return isinstance(record, list | tuple) and any(_mentions(x, name) for x in record)


# -------------------------------------------------------------------- picker --


def drive_picker(module, bitmaps, seed: int, size: int, order: str) -> list:
    """A random life of one picker: parents come, announce, answer, fail and go."""
    events = random.Random(seed)  # the script, the same for both backends
    picker = module.PiecePicker(
        size,
        random.Random(seed + 1),
        max_in_flight=events.choice([1, 4, 16]),
        per_parent_limit=events.choice([0, 1, 2]),
        order=order,
        dispatch_wait=0.1 if order == "announced" else 0.0,
        piece_timeout=2.0,
        bitmaps=bitmaps,
    )
    out: list = []
    now = 0.0
    parents: list[str] = []
    for step in range(400):
        now += events.choice([0.0, 0.001, 0.05, 0.3])
        kind = events.random()
        if kind < 0.12 or not parents:
            pid = f"p{events.randrange(12)}"
            if pid not in parents:
                parents.append(pid)
            picker.parent_added(
                pid,
                _bitmap(bitmaps, events, size, events.random()),
                tx=events.randrange(100),
                max_tx=events.randrange(1, 200),
                now=now,
            )
        elif kind < 0.45:
            out.append(picker.parent_has(events.choice(parents), events.randrange(size), now))
        elif kind < 0.5:
            out.append(picker.parent_receiving(events.choice(parents), events.randrange(size), now))
        elif kind < 0.53:
            out.append(picker.parent_lost_piece(events.choice(parents), events.randrange(size)))
        elif kind < 0.6 and parents:
            pid = parents.pop(events.randrange(len(parents)))
            out.append(picker.parent_removed(pid))
        elif kind < 0.63:
            picker.parent_load(events.choice(parents), events.randrange(100), 150)
        outstanding = list(picker.in_flight)
        if outstanding and events.random() < 0.5:
            piece, parent = events.choice(outstanding)
            answer = events.random()
            if answer < 0.6:
                out.append(picker.piece_done(piece, parent, events.random(), now))
            elif answer < 0.8:
                out.append(picker.piece_busy(piece, parent, now, 0.1))
            else:
                out.append(picker.piece_failed(piece, parent, now))
        out.append(picker.check_timeouts(now))
        out.append(picker.nothing_to_start(now))
        out.append(picker.next_requests(now))
        out.append(picker.wakeup(now))
        out.append((picker.have_count, picker.in_flight, picker.parent_ids, step))
    out.append(picker.rng.getstate())
    return _plain(out)


@pytest.mark.parametrize("order", ["rarest", "announced"])
@pytest.mark.parametrize("seed", range(12))
def test_the_compiled_picker_answers_as_the_python_one(seed, order, built, python):
    size = 8 + seed * 7
    want = drive_picker(python[1], python[0], seed, size, order)
    got = drive_picker(built[1], built[0], seed, size, order)
    assert got == want
    # the comparison sees what happened: failures (and requests, which they follow)
    assert _mentions(want, "PieceFailure")


# ------------------------------------------------------------- download loop --


def drive_download(module, bitmaps, seed: int, policy: str) -> list:
    """A random life of one download: parents offered, announcing, answering."""
    events = random.Random(seed)
    size = events.choice([1, 3, 16, 40])
    cfg = module.DownloadConfig(policy=policy, cut_through=events.random() < 0.3)
    dl = module.Download(
        size, random.Random(seed + 1), cfg, now=0.0, origin="origin", bitmaps=bitmaps
    )
    out: list = []
    now = 0.0
    parents: list[str] = []
    for step in range(300):
        if dl.done:
            break
        now += events.choice([0.0, 0.01, 0.2, 1.5, 40.0])
        kind = events.random()
        if kind < 0.1 or not parents:
            offers = []
            for _ in range(events.randrange(1, 4)):
                pid = f"p{events.randrange(10)}"
                parents.append(pid)
                offers.append((pid, _bitmap(bitmaps, events, size, events.random()), 10, 100))
            out.append(dl.add_parents(offers, now))
        elif kind < 0.5:
            pid, piece = events.choice(parents), events.randrange(size)
            out.append(dl.parent_has(pid, piece, now))
            out.append(dl.pump(now))
        elif kind < 0.55:
            out.append(dl.parent_receiving(events.choice(parents), events.randrange(size), now))
        elif kind < 0.58:
            out.append(dl.parent_lost_piece(events.choice(parents), events.randrange(size), now))
        elif kind < 0.62:
            out.append(dl.parent_gone(events.choice(parents), now))
        elif kind < 0.63:
            out.append(dl.back_to_source("test", now))
        outstanding = list(dl.picker.in_flight)
        if outstanding and events.random() < 0.6:
            piece, parent = events.choice(outstanding)
            answer = events.random()
            if answer < 0.6:
                out.append(dl.piece_done(piece, parent, events.random() * 3, now))
            else:
                failure = events.choice(module.KINDS)
                out.append(dl.piece_failed(piece, parent, failure, now, "test"))
        due = dl.next_timer(now)
        out.append(due)
        if due <= now + 1.0:
            out.append(dl.tick(max(now, due)))
        out.append((dl.state, dl.in_flight, dl.reschedules, dl.mean_cost, step))
    out.append(dl.rng.getstate())
    return _plain(out)


@pytest.mark.parametrize("policy", ["d7y", "dragonfly"])
@pytest.mark.parametrize("seed", range(12))
def test_the_compiled_download_loop_answers_as_the_python_one(seed, policy, built, python):
    want = drive_download(python[2], python[0], seed, policy)
    got = drive_download(built[2], built[0], seed, policy)
    assert got == want
    assert _mentions(want, "Fetch")


def test_the_twin_drivers_can_tell_a_difference(python):
    # The comparisons above would pass on drivers that record nothing: another seed
    # for the same script gives another record.
    bitmaps, picker, download = python
    one, other = (drive_picker(picker, bitmaps, s, 8, "rarest") for s in (1, 2))
    assert one != other
    one, other = (drive_download(download, bitmaps, s, "d7y") for s in (3, 4))
    assert one != other


# --------------------------------------------------------------- the digest --


def test_a_build_from_another_version_of_the_source_is_not_used(monkeypatch):
    compiled = import_built("d7y.core.scheduling._picker")
    monkeypatch.setattr(ext, "NO_EXTENSIONS", False)  # (also in the twins' test pass)
    assert ext.load_backend("picker", "d7y.core.scheduling") is compiled
    monkeypatch.setattr(compiled, "_D7Y_SOURCE_DIGEST", "0" * 64)
    with pytest.warns(RuntimeWarning, match="built from another version of .*_picker_py.py"):
        chosen = ext.load_backend("picker", "d7y.core.scheduling")
    assert chosen is _picker_py


def test_the_digest_covers_the_source_and_its_pxd(tmp_path):
    source = tmp_path / "_thing_py.py"
    source.write_text("x = 1\n")
    bare = ext.source_digest(str(source))
    (tmp_path / "_thing.pxd").write_text("cdef int x\n")
    typed = ext.source_digest(str(source))
    source.write_text("x = 2\n")
    assert len({bare, typed, ext.source_digest(str(source))}) == 3


def test_the_compiled_modules_are_the_ones_the_public_names_give():
    if ext.NO_EXTENSIONS:
        picker, download = _picker_py, _download_py
    else:
        picker, download = (
            import_built(f"d7y.core.scheduling._{n}") for n in ("picker", "download")
        )
    from d7y.core.scheduling import download as public_download
    from d7y.core.scheduling import picker as public_picker

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stale build would warn
        assert public_picker.backend is picker and public_download.backend is download
    assert public_download.Download is download.Download
    assert math.isinf(public_download.Download(4, random.Random(1), now=0.0).last_reschedule)
