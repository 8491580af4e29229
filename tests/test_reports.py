"""The structured report on its own: rules for signing, terminology, signature and addenda."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from server.errors import BadRequest, ConfigError, Conflict
from server.messages import parse
from server.reports.model import (
    BUNDLED_TERMINOLOGY,
    ReportBody,
    ReportState,
    Term,
    check_draft,
    check_terminology,
    load_terminology,
    missing_for_signing,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
IMAGE = "0123456789abcdef0123456789abcdef"
COMPLETE = {
    "findings": "All examined segments compress fully.",
    "category": "no_dvt",
    "recommendation": "No further imaging.",
    "concordance": "agree",
    "technical_quality": {"grade": "adequate"},
    "key_image_ids": [IMAGE],
}


def body(**fields: object) -> ReportBody:
    return parse(ReportBody, fields)


def missing(application: str | None, report: ReportBody, first_read: bool = True) -> list[str]:
    return [m.field for m in missing_for_signing(application, report, first_read, {IMAGE})]


def test_category_must_be_one_of_the_applications() -> None:
    check_draft("breast", body(category="4B"))
    check_draft("dvt", body(category="acute_on_chronic"))
    with pytest.raises(BadRequest) as refused:
        check_draft("breast", body(category="7 secret"))
    assert (refused.value.code, refused.value.field) == ("invalid_field", "category")
    assert "4A" in refused.value.message and "secret" not in refused.value.message
    with pytest.raises(BadRequest) as refused:
        check_draft("thyroid", body(category="TR3"))
    assert refused.value.field == "category"
    check_draft(None, body(findings="Normal."))


def test_empty_draft_lists_everything_signing_needs() -> None:
    assert missing("dvt", body()) == [
        "findings",
        "category",
        "recommendation",
        "concordance",
        "technical_quality",
        "key_image_ids",  # a signed report cites at least one key image
    ]
    assert missing("thyroid", body(), first_read=False) == [
        "findings",
        "recommendation",
        "technical_quality",
        "key_image_ids",
    ]
    assert missing("dvt", body(**COMPLETE)) == []


def test_limited_study_must_say_why() -> None:
    limited = body(**{**COMPLETE, "technical_quality": {"grade": "limited"}})
    assert missing("dvt", limited) == ["technical_quality.reasons"]
    reasoned = {"grade": "non_diagnostic", "reasons": ["poor_image_quality"], "note": "Obese calf."}
    assert missing("dvt", body(**{**COMPLETE, "technical_quality": reasoned})) == []


def test_key_images_must_be_the_consultations_own() -> None:
    stranger = "f" * 32
    assert missing("dvt", body(**{**COMPLETE, "key_image_ids": [IMAGE, stranger]})) == [
        "key_image_ids"
    ]
    with pytest.raises(BadRequest) as refused:
        body(key_image_ids=["../etc/passwd"])
    assert refused.value.field == "key_image_ids.0"


def test_birads_0_report_must_recommend_the_additional_imaging() -> None:
    draft = body(**{**COMPLETE, "category": "0", "recommendation": None})
    items = missing_for_signing("breast", draft, True, {IMAGE})
    assert [i.field for i in items] == ["recommendation"]
    assert "which imaging" in items[0].why
    other = missing_for_signing("breast", body(**{**COMPLETE, "category": "2"}), True, {IMAGE})
    assert [i.field for i in other] == []


def test_ambiguous_phrase_is_flagged_with_the_preferred_term() -> None:
    terms = load_terminology()
    report = body(
        findings="Old clot in the superficial femoral vein.\nChronic   thrombus distally.",
        recommendation="Clinical correlation recommended.",
        technical_quality={"grade": "limited", "note": "Calf veins: DVT cannot be excluded."},
    )
    flags = [(f.field, f.phrase, f.preferred) for f in check_terminology(terms, report)]
    assert flags == [
        ("findings", "old clot", "chronic postthrombotic change"),
        ("findings", "superficial femoral vein", "femoral vein"),
        ("findings", "chronic thrombus", "chronic postthrombotic change"),
        ("recommendation", "clinical correlation recommended", flags[3][2]),
        ("technical_quality.note", "DVT cannot be excluded", flags[4][2]),
    ]
    assert all(f.why.endswith(".") for f in check_terminology(terms, report))


def test_preferred_wording_and_parts_of_words_are_not_flagged() -> None:
    terms = load_terminology()
    clean = body(
        findings="Chronic postthrombotic change in the femoral vein. BI-RADS 3 (probably benign).",
        recommendation="Complex cystic and solid mass: biopsy. Nonocclusive clots absent.",
    )
    assert check_terminology(terms, clean) == []
    hyphen = body(findings="A nonocclusive clot and an ill defined margin.")
    assert [f.phrase for f in check_terminology(terms, hyphen)] == [
        "non-occlusive clot",
        "ill-defined",
    ]


def test_bundled_terminology_covers_breast_and_venous_reporting() -> None:
    phrases = {t.phrase for t in load_terminology()}
    assert len(phrases) >= 15
    assert {"chronic thrombus", "complex cyst", "probably benign", "rule out"} <= phrases
    assert BUNDLED_TERMINOLOGY.name == "terminology.toml"


def test_site_terminology_file_extends_and_overrides(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        '[[term]]\nphrase = "Chronic  Thrombus"\npreferred = "residual vein thrombosis"\n'
        'why = "Our vascular lab reports it so."\n\n'
        '[[term]]\nphrase = "echogenic focus"\npreferred = "calcification"\nwhy = "Local usage."\n',
        encoding="utf-8",
    )
    terms = load_terminology(site)
    assert terms[:2] == (
        Term("Chronic Thrombus", "residual vein thrombosis", "Our vascular lab reports it so."),
        Term("echogenic focus", "calcification", "Local usage."),
    )
    assert len(terms) == len(load_terminology()) + 1
    flags = check_terminology(terms, body(findings="Chronic thrombus; an echogenic focus."))
    assert [(f.phrase, f.preferred) for f in flags] == [
        ("Chronic Thrombus", "residual vein thrombosis"),
        ("echogenic focus", "calcification"),
    ]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('[[term]]\nphrase = "a"\npreferred = "b"\nwhy = "c"\n[[term]]\nphrase = "x"\n', "term 2"),
        ('[[term]]\nphrase = "a"\npreferred = ""\nwhy = "c"\n', "'preferred'"),
        ('[[term]]\nphrase = "..."\npreferred = "b"\nwhy = "c"\n', "'phrase' must contain"),
        ('[[term]]\nphrase = "a"\npreferred = "b"\nwhy = "c"\n' * 2, "term 2: the phrase"),
        ('[[terms]]\nphrase = "a"\n', "only [[term]] tables"),
        ("[[term]\n", "not valid TOML"),
    ],
)
def test_malformed_terminology_file_is_named(tmp_path: Path, content: str, says: str) -> None:
    site = tmp_path / "site.toml"
    site.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"site\.toml") as refused:
        load_terminology(site)
    assert says in str(refused.value)


def test_signed_report_is_immutable_and_changes_go_in_addenda() -> None:
    state = ReportState("dvt")
    v1 = state.draft(body(findings="Draft."), "dr-a", T0)
    v2 = state.draft(body(**COMPLETE), "dr-a", T0 + timedelta(minutes=5))
    signed = state.sign(
        "dr-a", T0 + timedelta(minutes=6), has_first_read=True, known_key_images={IMAGE}
    )
    assert (v1.version, v2.version, signed.version) == (1, 2, 3)
    assert signed.body == v2.body and signed.signed_by == "dr-a"
    assert signed.signed_at == T0 + timedelta(minutes=6) and state.signed
    with pytest.raises(Conflict) as refused:
        state.draft(body(findings="Changed."), "dr-a", T0 + timedelta(minutes=7))
    assert refused.value.code == "report_signed"
    with pytest.raises(Conflict) as refused:
        state.sign("dr-b", T0, has_first_read=True, known_key_images={IMAGE})
    assert refused.value.code == "report_signed"
    later = T0 + timedelta(hours=2)
    note = state.addendum("  Popliteal vein re-read: compressible.  ", "dr-b", later)
    assert (note.version, note.body, note.addendum) == (
        4,
        None,
        "Popliteal vein re-read: compressible.",
    )
    assert (note.author, note.signed_by, note.signed_at, note.created_at) == (
        "dr-b",
        "dr-b",
        later,
        later,
    )
    assert state.addenda == [note] and state.current == v2.body
    rebuilt = ReportState("dvt", state.versions)
    assert rebuilt.signed and rebuilt.addenda == [note] and rebuilt.current == v2.body


def test_signing_refuses_an_incomplete_or_missing_report() -> None:
    with pytest.raises(Conflict) as refused:
        ReportState("dvt").sign("dr-a", T0, has_first_read=False, known_key_images=set())
    assert refused.value.code == "no_report"
    state = ReportState("dvt")
    state.draft(body(findings="Partial."), "dr-a", T0)
    with pytest.raises(Conflict) as refused:
        state.sign("dr-a", T0, has_first_read=True, known_key_images=set())
    assert refused.value.code == "report_incomplete"
    assert "Category" in refused.value.message and "Technical quality" in refused.value.message
    assert not state.signed and len(state.versions) == 1


def test_addendum_only_after_signing_and_never_empty() -> None:
    state = ReportState("breast")
    with pytest.raises(Conflict) as refused:
        state.addendum("Too early.", "dr-a", T0)
    assert refused.value.code == "report_not_signed"
    state.draft(body(**{**COMPLETE, "category": "2"}), "dr-a", T0)
    state.sign("dr-a", T0, has_first_read=True, known_key_images={IMAGE})
    with pytest.raises(BadRequest):
        state.addendum("   ", "dr-a", T0)
    # Once signed, the signature is what refuses a draft, whatever the draft holds.
    with pytest.raises(Conflict) as signed:
        state.draft(body(category="no_dvt"), "dr-a", T0)
    assert signed.value.code == "report_signed"


def test_versions_out_of_order_are_refused() -> None:
    stored = ReportState("dvt")
    stored.draft(body(findings="x"), "dr-a", T0)
    with pytest.raises(ValueError, match="numbered"):
        ReportState("dvt", list(stored.versions) * 2)
