"""Filter a face dataset to the images with exactly one face (ACCORD's FFHQ set for Table 4).

    python scripts/prepare_faces.py data/ffhq/images1024x1024 --output data/ffhq_single_face
    python scripts/prepare_faces.py data/ffhq --output out --insightface-root models/buffalo_l

Writes ``kept.txt`` (paths relative to the input folder), ``dropped.tsv`` (path and reason: no
face, <n> faces, unreadable) and ``faces.json`` (counts, detector, images per second) into
``--output``. Without ``--insightface-root`` the detector is scikit-image's LBP cascade (offline,
box-only); with it, insightface's SCRFD from that model pack through onnxruntime (``pip install
onnxruntime``), as ACCORD filtered. What the user can fix is one ``error: ...`` line, exit code
2 (--debug: the traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from core.errors import run_command  # noqa: E402
from metrics.faces import load_face_detector  # noqa: E402
from preparation.faces import prepare_face_folder  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="image folder (nested folders are searched)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the lists")
    parser.add_argument(
        "--insightface-root",
        type=Path,
        default=None,
        help="insightface model pack folder (det_*.onnx) or a detection .onnx",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)  # fmt: skip


def progress_printer(every: int = 500) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            print(f"{done}/{total} images", file=sys.stderr, flush=True)

    return show


def prepare(argv: list[str]) -> str:
    args = parse_args(argv)
    detector = load_face_detector(args.insightface_root)
    progress = None if args.quiet else progress_printer()
    result = prepare_face_folder(args.folder, args.output, detector, progress)
    counts = ", ".join(f"{n} {kind}" for kind, n in result.reason_counts().items() if n)
    return (
        f"kept {len(result.kept)} of {result.total} images with exactly one face"
        f"{f' (dropped: {counts})' if counts else ''} in {result.seconds:.1f} s "
        f"({result.images_per_second():.2f} images/s, {detector.name}): {args.output}"
    )


def main(argv: list[str]) -> int:
    """``error: ...`` and exit code 2 for what the user can fix; --debug shows tracebacks."""
    return run_command(prepare, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
