"""Face detection, alignment and the one-face filter, on real faces that ship with scikit-image.

``skimage.data.astronaut()`` shows one face (Eileen Collins, around x 180-270, y 70-165 of the
512 x 512 photo); ``lfw_subset()`` holds 100 face crops then 100 non-faces at 25 x 25, upscaled
here. The detector is the offline scikit-image cascade; insightface's path is checked for its
errors (onnxruntime and the model pack are not on this machine).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT
from PIL import Image
from skimage import data

from metrics.faces import (
    ALIGNED_SIZE,
    ARCFACE_POINTS,
    CascadeFaceDetector,
    Face,
    align_face,
    group_windows,
    load_face_detector,
    nms,
    similarity_transform,
)
from preparation.faces import DROPPED_FILE, KEPT_FILE, KEPT_IMAGES, SUMMARY_FILE
from preparation.photos import load_image_folder

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from prepare_faces import main as prepare_faces_main  # noqa: E402  (a script, not a package)


def lfw_face(index: int, side: int = 192) -> np.ndarray:
    """LFW crop ``index`` (0-99 faces), upscaled bicubically to RGB uint8 (side, side, 3)."""
    grey = cv2.resize(data.lfw_subset()[index], (side, side), interpolation=cv2.INTER_CUBIC)
    return np.repeat((grey.clip(0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def two_faces() -> np.ndarray:
    """Two different LFW faces pasted side by side, 192 x 384."""
    return np.concatenate([lfw_face(0), lfw_face(1)], axis=1)


def gradient() -> np.ndarray:
    ramp = np.linspace(0, 255, 256).astype(np.uint8)
    return np.repeat(np.tile(ramp, (256, 1))[..., None], 3, axis=2)


def centre(face: Face) -> tuple[float, float]:
    x1, y1, x2, y2 = face.box
    return (x1 + x2) / 2, (y1 + y2) / 2


@pytest.fixture(scope="module")
def detector() -> CascadeFaceDetector:
    return CascadeFaceDetector()


def test_the_astronaut_has_exactly_one_face_where_her_face_is(
    detector: CascadeFaceDetector,
) -> None:
    faces = detector.detect(data.astronaut())
    assert len(faces) == 1
    x, y = centre(faces[0])
    assert 190 < x < 260 and 80 < y < 150
    assert faces[0].landmarks is None  # the cascade gives boxes only


@pytest.mark.parametrize("image", [data.brick(), gradient()], ids=["brick", "gradient"])
def test_texture_and_gradient_have_no_face(
    detector: CascadeFaceDetector, image: np.ndarray
) -> None:
    assert detector.detect(image) == []


def test_two_faces_side_by_side_are_two_faces_one_per_half(detector: CascadeFaceDetector) -> None:
    faces = detector.detect(two_faces())
    assert len(faces) == 2
    assert sorted(centre(face)[0] < 192 for face in faces) == [False, True]


def test_most_upscaled_lfw_faces_are_found_and_few_non_faces(detector: CascadeFaceDetector) -> None:
    """A bound on the fallback's quality on tiny 25 x 25 crops (FFHQ's are 1024 px)."""
    found = [len(detector.detect(lfw_face(i, 128))) == 1 for i in range(0, 100, 5)]
    false = [len(detector.detect(lfw_face(i, 128))) > 0 for i in range(100, 200, 5)]
    assert sum(found) >= 15 and sum(false) <= 3


def test_nms_keeps_the_best_of_overlapping_boxes_and_separate_ones() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 9.0]])
    scores = np.array([0.6, 0.9, 0.5, 0.8])
    # IoU(1, 0) = 81/119 and IoU(1, 3) = 72/118: both over 0.4; box 2 overlaps nothing.
    assert nms(boxes, scores, 0.4) == [1, 2]
    assert nms(boxes, scores, 0.9) == [1, 3, 0, 2]


def test_windows_of_one_face_become_one_face_and_an_inner_hit_joins_it() -> None:
    shifts = [(dx, dy) for dx in (0, 2, 4) for dy in (0, 3)]
    face = [[10 + dx, 20 + dy, 60 + dx, 70 + dy] for dx, dy in shifts]
    eye = [[20, 30, 32, 42], [21, 30, 33, 42]]  # inside the face: joins it
    stray = [[100, 100, 120, 120]]
    grouped = group_windows(np.array(face + eye + stray, dtype=float))
    assert [support for _, support in grouped] == [len(face) + len(eye), 1]
    np.testing.assert_allclose(grouped[0][0], np.mean(face, axis=0))


def lstsq_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Independent solve: x' = a x - b y + tx, y' = b x + a y + ty by linear least squares."""
    rows, values = [], []
    for (x, y), (u, v) in zip(source, target):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        values += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(values), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_alignment_maps_five_points_onto_arcface_canonical_points() -> None:
    angle, scale, shift = 0.3, 2.5, np.array([140.0, 60.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = (ARCFACE_POINTS @ rotation.T) * scale + shift  # a tilted, larger face in a photo
    matrix = similarity_transform(source, ARCFACE_POINTS)
    mapped = source @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, ARCFACE_POINTS, atol=1e-9)

    noisy = source + np.random.default_rng(0).normal(0, 3, source.shape)
    np.testing.assert_allclose(
        similarity_transform(noisy, ARCFACE_POINTS),
        lstsq_similarity(noisy, ARCFACE_POINTS),
        atol=1e-9,
    )


def test_aligned_crop_puts_the_landmarks_on_the_canonical_pixels() -> None:
    """Five bright dots at the source points land on ArcFace's points in the 112 x 112 crop."""
    source = ARCFACE_POINTS * 2.2 + np.array([90.0, 40.0])
    image = np.zeros((400, 400, 3), dtype=np.uint8)
    for x, y in source.round().astype(int):
        image[y - 2 : y + 3, x - 2 : x + 3] = 255
    crop = align_face(image, Face((0, 0, 400, 400), 1.0, source))
    assert crop.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    for x, y in ARCFACE_POINTS.round().astype(int):
        assert crop[y, x].min() > 200
    assert crop[5, 5].max() == 0


def save(folder: Path, name: str, image: np.ndarray) -> None:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / name)


def test_prepare_faces_keeps_one_face_images_and_says_why_others_went(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "ffhq"
    save(images, "00000/astronaut.png", data.astronaut())
    save(images, "00000/lfw.png", lfw_face(1, 256))
    save(images, "01000/two.png", two_faces())
    save(images, "01000/brick.jpg", np.repeat(data.brick()[..., None], 3, axis=2))
    (images / "01000" / "broken.png").write_bytes(b"not a png")
    output = tmp_path / "lists"
    assert prepare_faces_main([str(images), "--output", str(output), "--quiet"]) == 0
    assert "kept 2 of 5 images" in capsys.readouterr().out
    kept = (output / KEPT_FILE).read_text().splitlines()
    assert kept == ["00000/astronaut.png", "00000/lfw.png"]
    reasons = dict(line.split("\t") for line in (output / DROPPED_FILE).read_text().splitlines())
    assert set(reasons) == {"01000/two.png", "01000/brick.jpg", "01000/broken.png"}
    assert reasons["01000/two.png"] == "2 faces"
    assert reasons["01000/brick.jpg"] == "no face"
    assert reasons["01000/broken.png"].startswith("unreadable: Cannot read image")
    assert (output / SUMMARY_FILE).exists()
    # The kept faces as a folder the DataModule trains on (load_image_folder reads it).
    trained_on = load_image_folder(output / KEPT_IMAGES)
    assert [p.name for p in sorted((output / KEPT_IMAGES).iterdir())] == [
        "00000__astronaut.png", "00000__lfw.png"]  # fmt: skip
    assert trained_on[0].size == (512, 512)


def test_a_folder_without_any_single_face_image_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save(tmp_path / "in", "brick.png", np.repeat(data.brick()[..., None], 3, axis=2))
    save(tmp_path / "in", "two.png", two_faces())
    code = prepare_faces_main([str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: no image in") and err.count("\n") == 1
    assert "1 no face, 1 several faces" in err
    assert len((tmp_path / "out" / DROPPED_FILE).read_text().splitlines()) == 2


def test_insightface_detector_without_onnxruntime_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails even where installed
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    (pack / "det_10g.onnx").write_bytes(b"")
    save(tmp_path / "in", "a.png", data.astronaut())
    argv = [
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--insightface-root",
        str(pack),
    ]
    assert prepare_faces_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install onnxruntime" in err and err.count("\n") == 1


def test_a_model_pack_that_does_not_exist_or_lacks_a_detector_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_face_detector(tmp_path / "missing")
    (tmp_path / "2d106det.onnx").write_bytes(b"")  # a landmark model, not the detector
    with pytest.raises(FileNotFoundError, match=r"holds no det_\*\.onnx"):
        load_face_detector(tmp_path)


class FakeScrfdSession:
    """SCRFD's 9 outputs (strides 8, 16, 32; 2 anchors; scores, distances, 5 points), all
    empty but one hit at stride 16, cell (row 10, column 20), second anchor."""

    def __init__(self, path: str, providers: list[str]) -> None:
        self.blob: np.ndarray | None = None

    def get_inputs(self) -> list[object]:
        return [type("Input", (), {"name": "input.1"})()]

    def get_outputs(self) -> list[object]:
        return [object()] * 9

    def run(self, names: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.blob = feeds["input.1"]
        counts = [(640 // s) ** 2 * 2 for s in (8, 16, 32)]
        scores = [np.zeros((n, 1), np.float32) for n in counts]
        boxes = [np.zeros((n, 4), np.float32) for n in counts]
        points = [np.zeros((n, 10), np.float32) for n in counts]
        hit = (10 * 40 + 20) * 2 + 1
        scores[1][hit] = 0.9
        boxes[1][hit] = [2, 3, 4, 5]
        points[1][hit] = np.arange(10) / 10
        return scores + boxes + points


def test_scrfd_outputs_decode_to_boxes_and_landmarks_in_image_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """insightface's decoding, computed by hand: anchor centre (20, 10) x 16 = (320, 160) in the
    640 letterbox; distances x stride; a 320 x 200 image is scaled by 2 into it."""
    fake = type(sys)("onnxruntime")
    fake.InferenceSession = FakeScrfdSession  # type: ignore[attr-defined]
    fake.get_available_providers = lambda: ["CPUExecutionProvider"]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    (tmp_path / "det_10g.onnx").write_bytes(b"")
    detector = load_face_detector(tmp_path)
    faces = detector.detect(np.full((200, 320, 3), 127, dtype=np.uint8))
    assert len(faces) == 1 and faces[0].score == pytest.approx(0.9)
    expected_box = np.array([320 - 32, 160 - 48, 320 + 64, 160 + 80]) / 2
    np.testing.assert_allclose(faces[0].box, expected_box, rtol=1e-6)
    offsets = (np.arange(10) / 10 * 16).reshape(5, 2)
    np.testing.assert_allclose(faces[0].landmarks, (np.array([320, 160]) + offsets) / 2, rtol=1e-6)
    blob = detector.session.blob  # type: ignore[attr-defined]
    assert blob.shape == (1, 3, 640, 640)
    assert blob[0, 0, 0, 0] == pytest.approx((127 - 127.5) / 128)  # the image, (x - 127.5) / 128
    assert blob[0, 0, 639, 0] == pytest.approx(-127.5 / 128)  # the letterbox padding below it
