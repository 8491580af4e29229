"""The DICOM core, directly: profiles, de-identification rules, writer (dciodvfy), archive."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from dicom_checks import dciodvfy_errors, every_value, read

from server.dicom import deid, writer
from server.dicom.profiles import BUNDLED_PROFILES, load_profiles
from server.errors import ConfigError
from server.imaging.archive import Archive, ArchiveCorrupt, ArchiveMissing

KEY = b"k" * 32
NOW = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
APPLICATIONS = [None, "breast", "dvt", "abdominal", "thyroid", "obstetric"]
SIDES = [None, "left", "right", "bilateral", "not_applicable"]


def study(application: str | None = None, laterality: str | None = None) -> writer.Study:
    return writer.Study(
        patient=deid.pseudonym(KEY, "c1"),
        study_uid=deid.derived_uid(KEY, "study", "c1"),
        started_at=NOW,
        manufacturer="probelink",
        model="Synthetic phantom",
        transducer="L12-5",
        application=application,
        laterality=laterality,
    )


def instance(kind: str, n: int = 1, **more: object) -> writer.Instance:
    return writer.Instance(
        series_uid=deid.derived_uid(KEY, "series", "c1", kind),
        series_number=n,
        sop_uid=deid.derived_uid(KEY, kind, str(n)),
        instance_number=n,
        acquired_at=NOW,
        **more,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("application", "laterality"), list(itertools.product(APPLICATIONS, SIDES))
)
def test_every_object_passes_dciodvfy(
    application: str | None, laterality: str | None, tmp_path: Path
) -> None:
    s = study(application, laterality)
    pixels = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    image = writer.still(pixels, s, instance("still", stream_codec="video/vp8"))
    frames = [writer.jpeg_frame(pixels)] * 2
    clip = writer.clip(frames, (48, 64), 30.0, s, instance("clip", stream_codec="video/h264"))
    marks = [
        {"kind": "arrow", "points": [[0.1, 0.1], [0.5, 0.5]]},
        {"kind": "circle", "points": [[0.5, 0.5], [0.6, 0.5]]},
        {"kind": "text", "points": [[0.2, 0.8]], "text": "ZEBULON QUIXOTE L\\R"},
        {"kind": "freehand", "points": [[0.1, 0.1], [0.2, 0.3], [0.4, 0.2]]},
        {"kind": "caliper", "points": [[0.1, 0.9], [0.4, 0.9]]},
    ]
    state = writer.presentation_state(image, marks, s, instance("presentation_state"))
    # Free text typed in a session may name the patient: it stays out of the DICOM.
    assert b"ZEBULON" not in writer.to_bytes(state)
    kos = writer.key_object_selection([image, clip], s, instance("key_object_selection"))
    for ds in (image, clip, state, kos):
        data = writer.to_bytes(ds)
        assert dciodvfy_errors(data, tmp_path) == [], ds.SOPClassUID
        back = read(data)
        assert back.PatientIdentityRemoved == "YES"
        assert back.StudyInstanceUID == s.study_uid
        assert not any(e.tag.is_private for e in back.iterall())


def test_clip_frames_read_back_close_to_the_original() -> None:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[16:48, 16:48] = (200, 60, 30)
    frames = [writer.jpeg_frame(pixels)] * 3
    ds = read(writer.to_bytes(writer.clip(frames, (64, 64), 25.0, study(), instance("clip"))))
    frames = ds.pixel_array
    assert frames.shape == (3, 64, 64, 3)
    assert np.abs(frames.astype(int) - pixels).mean() < 6
    assert ds.FrameTime == "40.000" and ds.CineRate == 25


def test_mask_blanks_rectangles_and_fails_closed() -> None:
    frame = np.full((10, 20, 3), 255, dtype=np.uint8)
    deid.mask(frame, ((0, 0, 20, 3), (5, 5, 2, 2)))
    assert not frame[:3].any() and not frame[5:7, 5:7].any() and frame[4].all()
    with pytest.raises(deid.MaskingFailed):
        deid.mask(frame, ((15, 0, 10, 3),))  # outside the frame
    with pytest.raises(deid.MaskingFailed):
        deid.mask(frame, ())
    with pytest.raises(deid.MaskingFailed):
        deid.mask(np.zeros((10, 20), dtype=np.uint8), ((0, 0, 1, 1),))


def test_uids_and_pseudonyms_are_keyed_and_stable() -> None:
    a = deid.derived_uid(KEY, "study", "c1")
    assert a == deid.derived_uid(KEY, "study", "c1")
    assert a != deid.derived_uid(KEY, "study", "c2")
    assert a != deid.derived_uid(b"x" * 32, "study", "c1")
    assert a.startswith("2.25.") and len(a) <= 64 and all(p.isdigit() for p in a.split("."))
    assert deid.pseudonym(KEY, "c1") == deid.pseudonym(KEY, "c1") != deid.pseudonym(KEY, "c2")
    assert "c1" not in deid.pseudonym(KEY, "c1")


def test_stamp_declares_what_was_done() -> None:
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    cleaned = writer.still(pixels, study(), instance("still"))
    declared = writer.still(pixels, study(), instance("still", pixels_cleaned=False))
    codes = {i.CodeValue for i in cleaned.DeidentificationMethodCodeSequence}
    assert {"113100", "113101", "113106", "113109"} == codes
    assert "113101" not in {i.CodeValue for i in declared.DeidentificationMethodCodeSequence}
    assert cleaned.BurnedInAnnotation == declared.BurnedInAnnotation == "NO"
    values = [str(v) for v in every_value(cleaned)]
    assert "probelink" in values  # the de-identifying equipment


def test_bundled_profiles_load_and_scale_outwards(tmp_path: Path) -> None:
    profiles = load_profiles(None)
    assert profiles.mask_for("PROBELINK ", "synthetic  phantom", 1280, 720).mask == (
        (0, 0, 1280, 64),
    )
    # Same aspect, lower resolution (WebRTC adapting): scaled, rounded outwards.
    assert profiles.mask_for("probelink", "Synthetic phantom", 640, 360).mask == ((0, 0, 640, 32),)
    assert profiles.mask_for("probelink", "Synthetic phantom", 854, 480).mask[0][3] >= 43
    with pytest.raises(LookupError):
        profiles.mask_for("probelink", "Synthetic phantom", 500, 500)
    with pytest.raises(LookupError):
        profiles.mask_for("Acme", "US-1", 1280, 720)
    site = tmp_path / "site.toml"
    site.write_text(
        '[[profile]]\nmanufacturer = "Acme"\nmodel = "US-1"\nwidth = 800\nheight = 600\n'
        "mask = [[0, 0, 800, 40], [600, 560, 200, 40]]\n"
    )
    assert len(load_profiles(site).mask_for("acme", "us-1", 800, 600).mask) == 2
    assert BUNDLED_PROFILES.exists()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[[profile]]\nmodel = 'x'", "'manufacturer'"),
        (
            "[[profile]]\nmanufacturer='a'\nmodel='b'\nwidth=10\nheight=10\nmask=[[0,0,1,1]]",
            "width",
        ),
        ("[[profile]]\nmanufacturer='a'\nmodel='b'\nwidth=100\nheight=100\nmask=[]", "mask"),
        (
            "[[profile]]\nmanufacturer='a'\nmodel='b'\nwidth=100\nheight=100\nmask=[[0,0,200,1]]",
            "outside",
        ),
        (
            "[[profile]]\nmanufacturer='a'\nmodel='b'\nwidth=100\nheight=100\nmask=[[0,0,1]]",
            "rectangle",
        ),
        (
            "[[profile]]\nmanufacturer='a'\nmodel='b'\nwidth=100\nheight=100\nmask=[[0,0,1,1]]\ncolour=1",
            "unknown key",
        ),
        ("[profile", "not valid TOML"),
        ("other = 1", "only [[profile]]"),
    ],
)
def test_a_bad_profiles_file_stops_start_up_naming_what_is_wrong(
    text: str, complaint: str, tmp_path: Path
) -> None:
    site = tmp_path / "site.toml"
    site.write_text(text)
    with pytest.raises(ConfigError, match=complaint.replace("[", r"\[")):
        load_profiles(site)


def test_archive_writes_whole_files_named_by_their_hash(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.open()
    stored = archive.store(b"DICM" * 100, "1.2.3", "1.2.3.4")
    assert stored.path == f"1.2.3/1.2.3.4/{hashlib.sha256(b'DICM' * 100).hexdigest()}.dcm"
    assert archive.read(stored.path, stored.sha256) == b"DICM" * 100
    assert archive.store(b"DICM" * 100, "1.2.3", "1.2.3.4") == stored  # idempotent
    (archive.root / stored.path).write_bytes(b"tampered")
    with pytest.raises(ArchiveCorrupt):
        archive.read(stored.path, stored.sha256)
    with pytest.raises(ArchiveCorrupt):
        archive.read("../../etc/passwd", stored.sha256)
    with pytest.raises(ValueError):
        archive.store(b"x", "1.2/../..", "1.2")
    # What a crash leaves half-written is cleared at the next start.
    (archive.incoming / ".partial.tmp").write_bytes(b"half")
    archive.open()
    assert not list(archive.incoming.iterdir())


def test_nodes_sharing_an_archive_never_clear_each_others_writes(tmp_path: Path) -> None:
    shared = tmp_path / "volume"
    shared.mkdir()
    node_a, node_b = Archive(tmp_path / "a"), Archive(tmp_path / "b")
    for node in (node_a, node_b):
        node.data_dir.mkdir()
        (node.data_dir / "archive").symlink_to(shared)  # the volume, mounted in each
        node.open()
    assert node_a.incoming != node_b.incoming
    # Node A is writing when node B restarts: B clears only what it left itself.
    (node_a.incoming / ".in-flight.tmp").write_bytes(b"half")
    (node_b.incoming / ".partial.tmp").write_bytes(b"half")
    node_b.open()
    assert (node_a.incoming / ".in-flight.tmp").exists()
    assert not list(node_b.incoming.iterdir())
    # Each node keeps its staging directory across restarts.
    incoming = node_a.incoming
    node_a.open()
    assert node_a.incoming == incoming


def test_a_file_from_elsewhere_is_kept_only_if_it_is_the_recorded_one(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.open()
    data = b"DICM" * 100
    sha256 = hashlib.sha256(data).hexdigest()
    relative = f"1.2.3/1.2.3.4/{sha256}.dcm"
    # Another node's file: not here, which is not corruption.
    with pytest.raises(ArchiveMissing):
        archive.read(relative, sha256)
    # A copy from the PACS that is not that file is refused and not kept.
    with pytest.raises(ArchiveCorrupt):
        archive.adopt(b"DICM" * 99, relative, sha256)
    with pytest.raises(ArchiveCorrupt):
        archive.adopt(data, f"1.2.3/1.2.3.4/{'0' * 64}.dcm", sha256)
    assert not (archive.root / "1.2.3").exists()
    archive.adopt(data, relative, sha256)
    assert archive.read(relative, sha256) == data
