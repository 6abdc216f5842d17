"""Hugging Face datasets as ``prepare`` sources: ``hf://datasets/OWNER/NAME[@REVISION][/PATH]``.

The dataset's Parquet files are streamed one at a time: each is fetched with
``huggingface_hub.hf_hub_download`` and read batch by batch with pyarrow, so memory holds
one record batch, never the dataset.  ``REVISION`` is a branch, tag or commit
(URL-quoted, or a literal ``refs/convert/parquet`` / ``refs/pr/N`` as HfFileSystem
accepts); ``PATH`` is a folder or one ``.parquet`` file inside the repo.

Which files (all ``.parquet`` files under ``PATH``, in sorted order):

* A path component (folder or file name) *names* a split when it equals it, starts with it
  followed by one of ``-._ `` or a digit (``train-00000-of-00002.parquet``,
  ``train.parquet``, ``train_0.parquet``), or is ``partial-{split}`` (the datasets-server
  name for a partly converted split).  This covers ``data/{split}-00000-of-00001.parquet``,
  ``{split}/xxx.parquet``, ``data/{split}/...`` and the datasets-server conversion
  ``{config}/{split}/0000.parquet`` (every config is read unless ``PATH`` picks one).
* Files whose repo path names the requested split are used.  If no file names any split
  at all (neither the requested one nor a usual one: train, validation, test, dev, ...),
  every Parquet file is used.  A ``PATH`` that is itself a ``.parquet`` file is used as is.
* Nothing selected is a ``ValueError`` naming the split and a few of the files found.

Each record's key is its own path field (``sources.PATH_FIELDS``) when it has one, else
``OWNER/NAME/FILE:ROW`` (1-based row).  Rows whose text column is not a string are skipped;
a missing column is a ``ValueError`` naming the file; an unreadable (corrupt) file is
counted and named by ``prepare`` (:func:`pythoncoder.data.sources.iter_parquet`).

Resume and offline: ``hf_hub_download`` keeps every finished file in the Hugging Face
cache (``HF_HUB_CACHE``, default ``$HF_HOME/hub``), so a rerun reads finished files from
disk and only downloads what is missing; an interrupted download resumes there.  With
``HF_HUB_OFFLINE=1`` nothing touches the network: the file list comes from the cached
snapshot of the revision and the files from the cache, so a fully cached dataset prepares
with no network; a dataset that is not cached is a one-line ``ValueError``.  The cache
folder and the offline flag are huggingface_hub's own (``huggingface_hub.constants``, read
from the environment when it is imported).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote

PREFIX = "hf://datasets/"
_SEPARATORS = "-._ 0123456789"
# Split names the datasets library recognises in file and folder names.
_KNOWN_SPLITS = ("train", "training", "validation", "valid", "val", "dev", "test", "testing",
                 "eval", "evaluation")
_SPECIAL_REFS = ("refs/convert/", "refs/pr/")


@dataclass(frozen=True)
class HfSource:
    """A parsed ``hf://datasets/...`` source."""

    repo_id: str
    path_in_repo: str = ""
    revision: str | None = None

    @property
    def url(self) -> str:
        rev = "" if self.revision is None else "@" + self.revision
        path = "/" + self.path_in_repo if self.path_in_repo else ""
        return f"{PREFIX}{self.repo_id}{rev}{path}"


def parse_hf_url(url: str) -> HfSource:
    """Split ``hf://datasets/OWNER/NAME[@REVISION][/PATH]`` into an :class:`HfSource`."""
    def bad(why: str) -> ValueError:
        return ValueError(f"bad Hugging Face dataset source {url!r}: {why}; expected "
                          "hf://datasets/OWNER/NAME[@REVISION][/PATH]")

    if not isinstance(url, str) or not url.startswith("hf://"):
        raise bad("it does not start with hf://")
    if not url.startswith(PREFIX):
        raise bad("only dataset repos (hf://datasets/...) can be read")
    body = url[len(PREFIX):].strip("/")
    owner, _, rest = body.partition("/")
    name, _, rest = rest.partition("/")
    revision = None
    if "@" in owner:
        raise bad("missing dataset name")
    if "@" in name:
        name, _, rev_head = name.partition("@")
        rev_and_path = rev_head + ("/" + rest if rest else "")
        special = next((p for p in _SPECIAL_REFS if rev_and_path.startswith(p)), None)
        if special is not None:  # refs/convert/parquet, refs/pr/N hold a '/'
            parts = rev_and_path.split("/", 3)
            revision = "/".join(parts[:3])
            rest = parts[3] if len(parts) > 3 else ""
        else:
            revision = unquote(rev_head)
        if not revision:
            raise bad("empty revision after '@'")
    if not owner or not name:
        raise bad("missing dataset owner or name")
    path = rest.strip("/")
    if path and any(part in ("", ".", "..") for part in path.split("/")):
        raise bad("the path inside the repo has an empty, '.' or '..' component")
    return HfSource(repo_id=f"{owner}/{name}", path_in_repo=path, revision=revision)


def _names_split(file: str, split: str) -> bool:
    for part in file.split("/"):
        if part == split or part == f"partial-{split}":
            return True
        if len(part) > len(split) and part.startswith(split) and part[len(split)] in _SEPARATORS:
            return True
    return False


def select_parquet(src: HfSource, files: list[str], split: str) -> list[str]:
    """The Parquet files of ``files`` (repo paths) under ``src``'s path for ``split``."""
    path = src.path_in_repo
    if path and path in files:
        if not path.endswith(".parquet"):
            raise ValueError(f"{src.url}: {path} is not a .parquet file")
        return [path]
    under = sorted(f for f in files if f.endswith(".parquet")
                   and (not path or f.startswith(path + "/")))
    chosen = [f for f in under if _names_split(f, split)]
    if not chosen and not any(_names_split(f, s) for f in under for s in _KNOWN_SPLITS):
        chosen = under
    if not chosen:
        found = under or sorted(files)
        sample = ", ".join(found[:5]) + (f", ... ({len(found) - 5} more)" if len(found) > 5 else "")
        where = f" under {path!r}" if path else ""
        kind = "Parquet files" if under else "files"
        raise ValueError(f"{src.url}: no Parquet file for split {split!r}{where}; "
                         f"{kind} found: {sample or 'none'}")
    return chosen


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _not_cached(src: HfSource, what: str) -> ValueError:
    return ValueError(f"{src.url}: {what} is not in the Hugging Face cache ({_cache_dir()}) and "
                      "HF_HUB_OFFLINE is set; unset it to download")


def _cached_files(src: HfSource) -> list[str]:
    """Repo paths of the cached snapshot of ``src``'s revision (no network)."""
    import huggingface_hub as hfh
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        folder = hfh.snapshot_download(src.repo_id, repo_type="dataset", revision=src.revision,
                                       cache_dir=_cache_dir(), local_files_only=True)
    except LocalEntryNotFoundError as e:
        # Newer huggingface_hub raises IncompleteSnapshotError (a LocalEntryNotFoundError)
        # when the cached tree listing names files that were never downloaded (other splits,
        # say): that listing is the whole repo, so select from it; a missing selected file
        # then fails on its own.
        if type(e).__name__ == "IncompleteSnapshotError" and hasattr(hfh, "get_cached_repo_tree"):
            tree = hfh.get_cached_repo_tree(src.repo_id, repo_type="dataset",
                                            revision=src.revision, cache_dir=_cache_dir())
            return sorted(f.path for f in tree)
        rev = f" (revision {src.revision})" if src.revision else ""
        raise _not_cached(src, f"dataset {src.repo_id}{rev}") from None
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel = os.path.relpath(dirpath, folder)
        out += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in filenames]
    return sorted(out)


# The Hub client's transport errors (requests, httpx or httpx2, by huggingface_hub version):
# no network, a DNS failure, a timeout.
_CLIENTS = ("requests", "urllib3", "httpx", "httpx2", "httpcore", "httpcore2")
_TRANSPORT = ("ConnectionError", "ConnectError", "TransportError", "NetworkError", "Timeout",
              "TimeoutException")


def _unreachable(src: HfSource, e: BaseException) -> ValueError | None:
    """A one-line error for a transport failure of the Hub's client, else ``None``."""
    if not any(c.__module__.split(".")[0] in _CLIENTS and c.__name__ in _TRANSPORT
               for c in type(e).__mro__):
        return None
    return ValueError(f"{src.url}: cannot reach the Hugging Face Hub ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else 'no detail'}); with "
                      "HF_HUB_OFFLINE=1 a dataset already in the cache is read without it")


def _repo_files(src: HfSource) -> list[str]:
    if _offline():
        return _cached_files(src)
    import huggingface_hub as hfh
    from huggingface_hub.utils import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return sorted(hfh.HfApi().list_repo_files(src.repo_id, repo_type="dataset",
                                                  revision=src.revision))
    except RevisionNotFoundError:
        raise ValueError(f"{src.url}: dataset {src.repo_id} has no revision "
                         f"{src.revision!r}") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{src.url}: no dataset {src.repo_id} on the Hub (or it is private "
                         "or gated and no token with access is set)") from None
    except Exception as e:
        error = _unreachable(src, e)
        if error is None:
            raise
        raise error from None


def parquet_files(src: HfSource | str, split: str = "train") -> list[str]:
    """Repo paths of ``src``'s Parquet files for ``split``, sorted (see the module docstring)."""
    if isinstance(src, str):
        src = parse_hf_url(src)
    return select_parquet(src, _repo_files(src), split)


def _download(src: HfSource, filename: str) -> str:
    import huggingface_hub as hfh
    from huggingface_hub.utils import LocalEntryNotFoundError

    offline = _offline()
    try:
        return hfh.hf_hub_download(src.repo_id, filename, repo_type="dataset",
                                   revision=src.revision, cache_dir=_cache_dir(),
                                   local_files_only=offline)
    except LocalEntryNotFoundError:
        if offline:
            raise _not_cached(src, filename) from None
        raise
    except Exception as e:
        error = _unreachable(src, e)
        if error is None:
            raise
        raise error from None


def fetch_parquet(url: str, split: str = "train") -> Iterator[tuple[str, str]]:
    """``(label, local path)`` of each of the dataset's Parquet files for ``split``, in
    order: listed once, then each downloaded (or found in the cache) when the caller asks
    for it, so a reader streams one file at a time (``sources.iter_documents`` reads them).
    Raises ``ValueError`` for a malformed URL, no matching file, or (offline) a dataset or
    file not in the cache."""
    src = parse_hf_url(url)
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{url}: reading hf:// sources needs huggingface_hub: "
                          "pip install 'pythoncoder[hub]'") from e
    for filename in parquet_files(src, split):
        yield f"{src.repo_id}/{filename}", _download(src, filename)
