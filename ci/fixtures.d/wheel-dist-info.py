#!/usr/bin/env python3
"""wheel-dist-info.py URL SIZE RECORD_SHA256 OUT_DIR

Extract only the *.dist-info/ directory of a wheel on an HTTP server that
serves byte ranges (PyPI's files.pythonhosted.org does), without
downloading the wheel: a wheel is a zip file, so the central directory at
its end says where each member is, and only those members are read.

Checks, in order: the server's size is SIZE (the index's); each member's
zip CRC-32 (zipfile checks it on read); RECORD's sha256 is RECORD_SHA256
(pinned by the caller); every other extracted file has the sha256 and
size RECORD lists for it. OUT_DIR receives NAME-VERSION.dist-info/ and is
written under a temporary name and renamed into place.
"""

import base64
import hashlib
import io
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile

BLOCK = 256 * 1024


class RangeReader(io.RawIOBase):
    """A seekable read-only file over HTTP Range requests, block-cached."""

    def __init__(self, url, size):
        self.url, self.size, self.pos, self.blocks, self.fetched = url, size, 0, {}, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, off, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = base + off
        return self.pos

    def _block(self, n):
        if n not in self.blocks:
            start = n * BLOCK
            end = min(start + BLOCK, self.size) - 1
            req = urllib.request.Request(self.url, headers={"Range": f"bytes={start}-{end}"})
            with urllib.request.urlopen(req, timeout=120) as r:
                if r.status != 206:
                    sys.exit(f"wheel-dist-info: {self.url}: HTTP {r.status} to a Range request (need 206)")
                total = r.headers.get("Content-Range", "").rsplit("/", 1)[-1]
                if total != str(self.size):
                    sys.exit(f"wheel-dist-info: {self.url}: size {total}, the index says {self.size}")
                data = r.read()
            if len(data) != end - start + 1:
                sys.exit(f"wheel-dist-info: {self.url}: short range read at {start}")
            self.blocks[n] = data
            self.fetched += len(data)
        return self.blocks[n]

    def readinto(self, b):
        if self.pos >= self.size:
            return 0
        n, off = divmod(self.pos, BLOCK)
        data = self._block(n)[off : off + len(b)]
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def b64_sha256(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__.strip().splitlines()[0])
    url, size, record_sha256, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    raw = RangeReader(url, size)
    zf = zipfile.ZipFile(io.BufferedReader(raw, buffer_size=BLOCK))
    names = [n for n in zf.namelist() if n.split("/", 1)[0].endswith(".dist-info") and not n.endswith("/")]
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1:
        sys.exit(f"wheel-dist-info: {url}: expected one .dist-info directory, found {sorted(tops)}")
    top = tops.pop()
    files = {n: zf.read(n) for n in names}  # zipfile checks each CRC-32
    record_name = f"{top}/RECORD"
    record = files.get(record_name)
    if record is None:
        sys.exit(f"wheel-dist-info: {url}: no {record_name}")
    got = hashlib.sha256(record).hexdigest()
    if got != record_sha256:
        sys.exit(f"wheel-dist-info: {url}: {record_name} has sha256 {got}, pinned {record_sha256}")
    listed = {}
    for line in record.decode().splitlines():
        path, digest, length = line.rsplit(",", 2)
        listed[path] = (digest, length)
    for n, data in files.items():
        if n == record_name:
            continue
        digest, length = listed.get(n, (None, None))
        if digest != b64_sha256(data) or length != str(len(data)):
            sys.exit(f"wheel-dist-info: {url}: {n} does not match its RECORD line")
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".dist-info.", dir=out)
    for n, data in files.items():
        p = os.path.join(tmp, n)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    dest = os.path.join(out, top)
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(os.path.join(tmp, top), dest)
    os.rmdir(tmp)
    print(f"{top}: {len(files)} files, {raw.fetched} of {size} bytes read")


if __name__ == "__main__":
    main()
