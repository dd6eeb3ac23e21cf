"""S3 artifact store benchmark: upload and download of one artifact against a real S3 server
(versitygw, posix backend, on this machine), and the node cache's hit, each beside a plain file
copy of the same bytes in the same run (so the ratios say what the S3 client costs over the
disk, not how fast this disk is).

    PYTHONPATH=operator:e2e python bench/objectstore.py [--mb 100] [--files 4]

Prints one JSON object: seconds and MB/s of upload, fetch (download + sha256 check), cache hit
(verify + hard links), and the plain copy; ratios against the copy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from flotilla.objectstore import S3Settings, fetch_artifact, upload_artifact
from localcluster import s3server

KEY = "0123456789abcdef0123"


def build(root: Path, total_mb: int, files: int) -> int:
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "config.pbtxt").write_text('name: "m"\n')
    size = total_mb * 1_000_000 // files
    for i in range(files):
        with (root / "m" / "1" / f"part-{i}.bin").open("wb") as f:
            for _ in range(size // 1_000_000):
                f.write(os.urandom(1_000_000))
            f.write(os.urandom(size % 1_000_000))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--files", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flotilla-bench-s3-") as tmp:
        work = Path(tmp)
        size = build(work / "src", args.mb, args.files)
        server = s3server.start(work / "s3")
        try:
            server.create_bucket("bench")
            settings = S3Settings(
                endpoint=server.endpoint,
                bucket="bench",
                prefix="fleet/",
                path_style=True,
                access_key_id=server.access_key,
                secret_access_key=server.secret_key,  # type: ignore[arg-type]
            )
            copy_s = timed(lambda: shutil.copytree(work / "src", work / "copy"))
            upload_s = timed(lambda: upload_artifact(settings, KEY, work / "src"))
            fetch_s = timed(lambda: fetch_artifact(settings, KEY, work / "dest"))
            fill_s = timed(lambda: fetch_artifact(settings, KEY, work / "dest-c1", work / "cache"))
            server.stop()  # the hit must not need the store
            hit_s = timed(lambda: fetch_artifact(settings, KEY, work / "dest-c2", work / "cache"))
        finally:
            server.stop()
    mb = size / 1e6
    print(
        json.dumps(
            {
                "artifact_mb": round(mb, 1),
                "files": args.files + 1,
                "server": f"versitygw {s3server.load_versions().versitygw} posix, 127.0.0.1",
                "plain_copy_s": round(copy_s, 3),
                "plain_copy_mb_s": round(mb / copy_s, 1),
                "upload_s": round(upload_s, 3),
                "upload_mb_s": round(mb / upload_s, 1),
                "fetch_s": round(fetch_s, 3),
                "fetch_mb_s": round(mb / fetch_s, 1),
                "cache_fill_fetch_s": round(fill_s, 3),
                "cache_hit_s": round(hit_s, 3),
                "upload_vs_copy": round(upload_s / copy_s, 2),
                "fetch_vs_copy": round(fetch_s / copy_s, 2),
                "cache_hit_vs_copy": round(hit_s / copy_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
