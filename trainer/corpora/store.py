"""Reading built corpora (a directory or a packed tar) and packing them.

A corpus root is a directory holding ``manifest.json`` and
``<name>/train.bin``, ``<name>/val.bin``: raw UTF-8 bytes of the documents
of a split, each followed by one NUL byte. The packed form is one plain tar
holding ``manifest.json`` and ``<name>/<split>.bin.xz``.
"""
from __future__ import annotations

import concurrent.futures
import copy
import functools
import hashlib
import io
import json
import lzma
import os
import tarfile
import time
from pathlib import Path

import numpy as np

from trainer.files import atomic_write_bytes

SPLITS = ("train", "val")
DOC_END = b"\x00"
# Measured on the full build (68 MB English, 72 MB Python train): preset 6
# compresses English 4.4x and Python 6.7x at ~1.1 MB/s per core; preset 9
# is 8% smaller on English for twice the time; preset 1 is 3x faster but
# 27% larger.
PACK_PRESET = 6


class CorpusError(ValueError):
    """A problem with corpus input, named in one line."""


def default_root() -> Path:
    """`$TRANSFER_CORPORA`, else `<repo>/corpora`."""
    env = os.environ.get("TRANSFER_CORPORA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "corpora"


def reference_manifest() -> dict:
    """The manifest of the build this project's grids were trained on
    (shipped with the package): split sizes for checks before any corpus is
    built, and the hashes a fresh build is compared with."""
    return json.loads((Path(__file__).parent / "reference_manifest.json").read_text())


def _is_packed(root: Path) -> bool:
    return root.is_file()


@functools.lru_cache(maxsize=8)
def _read_packed(path: str, mtime_ns: int, size: int) -> tuple[dict, dict[str, bytes]]:
    """Manifest and compressed members of a packed corpus (cached per process)."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if m.isfile():
                    members[m.name] = tar.extractfile(m).read()
    except tarfile.TarError as e:
        raise CorpusError(f"{path} is not a packed corpus tar ({e})") from None
    if "manifest.json" not in members:
        raise CorpusError(f"{path} has no manifest.json: not a packed corpus")
    return json.loads(members.pop("manifest.json")), members


def _packed(root: Path):
    st = root.stat()
    return _read_packed(str(root.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _decompressed(path: str, mtime_ns: int, size: int, member: str) -> np.ndarray:
    _, members = _read_packed(path, mtime_ns, size)
    arr = np.frombuffer(lzma.decompress(members[member]), dtype=np.uint8)
    arr.flags.writeable = False
    return arr


def manifest(root: str | os.PathLike | None = None) -> dict:
    """The manifest of a corpus root (directory or packed tar)."""
    root = Path(root) if root is not None else default_root()
    if not root.exists():
        raise CorpusError(f"corpus root {root} does not exist (run `transfer-train corpora build`)")
    if _is_packed(root):
        return copy.deepcopy(_packed(root)[0])  # callers may edit; the cache must not change
    path = root / "manifest.json"
    if not path.exists():
        raise CorpusError(f"{root} has no manifest.json: no corpus built there yet")
    return json.loads(path.read_text())


def check_name(name: str, known) -> None:
    known = sorted(known)
    if name not in known:
        raise CorpusError(f"unknown corpus {name!r}; known: {', '.join(known) or '(none)'}")


def open_split(root: str | os.PathLike | None, name: str, split: str) -> np.ndarray:
    """The bytes of one split as a read-only 1-D uint8 array.

    A directory root gives a memory map; a packed tar is decompressed in
    memory once per process.
    """
    root = Path(root) if root is not None else default_root()
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    man = manifest(root)
    check_name(name, man["distributions"])
    if _is_packed(root):
        st = root.stat()
        member = f"{name}/{split}.bin.xz"
        if member not in _packed(root)[1]:
            raise CorpusError(f"{root} lacks {member}")
        return _decompressed(str(root.resolve()), st.st_mtime_ns, st.st_size, member)
    path = root / name / f"{split}.bin"
    if not path.exists():
        raise CorpusError(f"{path} is missing: corpus {name!r} is incomplete, rebuild it")
    if path.stat().st_size == 0:  # mmap refuses empty files
        return np.zeros(0, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r")


def documents(data: np.ndarray) -> list[bytes]:
    """Split a split's bytes into its documents."""
    raw = bytes(data)
    if raw and not raw.endswith(DOC_END):
        raise CorpusError("split does not end with a document terminator (NUL)")
    return raw.split(DOC_END)[:-1]


def _truncate_at_doc(data: bytes, limit: int) -> bytes:
    """The longest prefix of whole documents that fits in `limit` bytes."""
    if len(data) <= limit:
        return data
    cut = data.rfind(DOC_END, 0, limit)
    return data[: cut + 1] if cut >= 0 else b""


def pack(root: Path, out: Path, max_mb: float, only: list[str] | None = None,
         truncate: bool = False, preset: int = PACK_PRESET, log=print) -> dict:
    """Pack chosen distributions of a directory root into one tar at `out`.

    Fails if the result would exceed `max_mb`, unless `truncate`: then train
    splits are cut at document boundaries (scaled by how far over the
    budget the first try came) and the cut is recorded in the manifest.
    """
    root = Path(root)
    if _is_packed(root):
        raise CorpusError(f"{root} is already packed; pack from a corpus directory")
    man = manifest(root)
    names = only or sorted(man["distributions"])
    for n in names:
        check_name(n, man["distributions"])
    limit = int(max_mb * 1024 * 1024)
    raw = {(n, s): bytes(open_split(root, n, s)) for n in names for s in SPLITS}
    comp: dict[tuple[str, str], bytes] = {}

    def compress(key):
        t0 = time.time()
        comp[key] = lzma.compress(raw[key], preset=preset)
        log(f"  {key[0]}/{key[1]}: {len(raw[key]) / 1e6:.1f} MB -> {len(comp[key]) / 1e6:.1f} MB "
            f"({time.time() - t0:.1f} s)")

    # liblzma releases the GIL: two threads use both cores.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(compress, raw))
    overhead = 64 * 1024
    total = sum(map(len, comp.values())) + overhead
    truncated = {}
    if total > limit:
        if not truncate:
            raise CorpusError(
                f"packed corpora would take {total / 2**20:.1f} MiB > --max-mb {max_mb:g}; "
                "choose fewer with --only or pass --truncate")
        val_total = sum(len(comp[(n, "val")]) for n in names)
        train_total = sum(len(comp[(n, "train")]) for n in names)
        budget = limit - overhead - val_total
        if budget <= 0:
            raise CorpusError(f"validation splits alone exceed --max-mb {max_mb:g}")
        # Cut every train split by the same fraction, with a little slack for
        # the compression ratio varying along a split.
        frac = 0.98 * budget / train_total
        for n in names:
            full = raw[(n, "train")]
            raw[(n, "train")] = _truncate_at_doc(full, int(len(full) * frac))
            truncated[n] = {"train_bytes_full": len(full), "train_bytes_kept": len(raw[(n, "train")])}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(compress, [(n, "train") for n in names]))
        total = sum(map(len, comp.values())) + overhead
        if total > limit:
            raise CorpusError(f"truncated pack still {total / 2**20:.1f} MiB > --max-mb {max_mb:g}")
    packed = {k: v for k, v in man.items() if k != "distributions"}
    packed["distributions"] = {}
    for n in names:
        d = json.loads(json.dumps(man["distributions"][n]))
        for s in SPLITS:
            data = raw[(n, s)]
            d["splits"][s].update(split_stats(data))
        if n in truncated:
            d["truncated"] = truncated[n]
        packed["distributions"][n] = d
    packed["packed"] = {"lzma_preset": preset, "from_root": str(root.resolve()),
                        "packed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        items = [("manifest.json", json.dumps(packed, indent=2, sort_keys=True).encode())]
        items += [(f"{n}/{s}.bin.xz", comp[(n, s)]) for n in names for s in SPLITS]
        for member, data in items:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    if len(data) > limit:
        raise CorpusError(f"packed corpora take {len(data) / 2**20:.1f} MiB > --max-mb {max_mb:g}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    return packed


def split_stats(data: bytes) -> dict:
    return {"bytes": len(data), "documents": data.count(DOC_END),
            "sha256": hashlib.sha256(data).hexdigest()}
