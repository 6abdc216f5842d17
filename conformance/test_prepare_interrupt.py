"""RUN-07: an interrupted ``prepare`` leaves nothing behind and the old dataset intact.

Ctrl-C in a notebook raises ``KeyboardInterrupt`` and the process lives on, so no later
``prepare`` of another directory would ever remove a build folder left by it (those of
dead processes only are cleaned).  The interrupt is a real SIGINT, sent to this process
while ``prepare`` reads its sources, after shards were already written to the build
folder; ``SystemExit`` (``sys.exit`` in a signal handler) is the other non-``Exception``.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest


def _sources(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):  # more than one encoding chunk (256 documents)
        (src / f"m{i:03d}.py").write_text(f"def f{i}(a):\n    return a * {i} + {i}\n" * 3)
    return src


@pytest.mark.req("RUN-07")
@pytest.mark.parametrize("how", ["sigint", "system_exit"])
def test_an_interrupted_prepare_leaves_no_build_folder(tmp_path, monkeypatch, how):
    import pythoncoder.data.sources as sources_lib
    from pythoncoder.data.prepare import prepare

    src = _sources(tmp_path)
    out = tmp_path / "data"
    prepare([str(src)], out, seq_len=16, val_fraction=0.0, num_workers=1, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    listing_before = sorted(p.name for p in tmp_path.iterdir())

    real = sources_lib.iter_documents
    seen_build: list[list[str]] = []

    def interrupted(*a, **kw):
        for n, doc in enumerate(real(*a, **kw)):
            if n == 280:  # Ctrl-C while reading: the first chunk's shards are written
                builds = [p for p in tmp_path.iterdir() if ".prepare-" in p.name]
                seen_build.extend(sorted(q.name for q in b.iterdir()) for b in builds)
                if how == "sigint":
                    os.kill(os.getpid(), signal.SIGINT)  # the default handler raises here
                else:
                    sys.exit(3)
            yield doc

    monkeypatch.setattr(sources_lib, "iter_documents", interrupted)
    # Python's own SIGINT handler (Ctrl-C -> KeyboardInterrupt), whatever this process
    # inherited: a shell starts background jobs with SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt if how == "sigint" else SystemExit):
            prepare([str(src)], out, seq_len=16, val_fraction=0.0, num_workers=1,
                    progress=False, shard_tokens=17 * 2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(seen_build) == 1 and any(n.startswith("train-") for n in seen_build[0]), \
        seen_build  # the interrupt came while a build folder with shards existed
    assert sorted(p.name for p in tmp_path.iterdir()) == listing_before  # nothing left
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old data intact


@pytest.mark.req("DATA-04", "RUN-07")
def test_a_rerun_after_an_interrupt_resumes_without_redoing_finished_chunks(tmp_path,
                                                                          monkeypatch):
    import pythoncoder.data.prepare as prep
    import pythoncoder.data.sources as sources_lib
    from pythoncoder.data.tokenizer import cache_dir

    src = tmp_path / "src"
    src.mkdir()
    for i in range(600):  # three chunks of at most 256 documents
        (src / f"m{i:03d}.py").write_text(f"def f{i}(a):\n    return a * {i} + {i * 7}\n")
    chunks = cache_dir() / "prepare-chunks"
    entries = lambda: set(chunks.glob("*.pkl")) if chunks.is_dir() else set()  # noqa: E731
    before = entries()
    real = sources_lib.iter_documents

    def interrupted(*a, **kw):
        for n, doc in enumerate(real(*a, **kw)):
            if n == 520:  # two chunks (512 documents) finished
                raise KeyboardInterrupt
            yield doc

    kw = dict(seq_len=16, val_fraction=0.1, num_workers=1, progress=False)
    monkeypatch.setattr(sources_lib, "iter_documents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare([src], tmp_path / "data", **kw)
    assert len(entries() - before) == 2 and not (tmp_path / "data").exists()
    monkeypatch.setattr(sources_lib, "iter_documents", real)

    calls = {"analyze": 0, "finish": 0}

    def counted(name, fn):
        def wrapper(chunk):
            calls[name] += len(chunk)
            return fn(chunk)
        return wrapper

    monkeypatch.setattr(prep, "_analyze", counted("analyze", prep._analyze))
    monkeypatch.setattr(prep, "_finish", counted("finish", prep._finish))
    resumed = prep.prepare([src], tmp_path / "data", **kw)
    assert calls == {"analyze": 600 - 512, "finish": 600 - 512}
    assert resumed["stats"]["chunks_resumed"] == 2
    assert entries() == before  # the entries it used are gone once it completed
    fresh = prep.prepare([src], tmp_path / "fresh", **kw)
    assert calls["analyze"] == 600 + 88 and fresh["stats"]["chunks_resumed"] == 0
    assert resumed["splits"] == fresh["splits"]  # every shard's sha256 among them
