"""Standard codes of model classes: the table, declared fallbacks, overrides, and the card's ``codes``."""

from __future__ import annotations

import json

import pytest

from medlens.errors import MedlensError
from medlens.inference.card import card_from_dict, read_card, write_card
from medlens.inference.codes import PRIVATE_SCHEME, concepts_for, lookup, read_overrides
from medlens.runs import read_json, write_json
from tests.inference.test_card import CARD


@pytest.mark.parametrize(
    ("name", "scheme", "code"),
    [
        ("normal", "SCT", "17621005"),
        ("No Finding", "SCT", "17621005"),  # NIH ChestX-ray14
        ("0_normal", "SCT", "17621005"),  # a class folder with an index prefix
        ("1_abnormal", "SCT", "263654008"),
        ("pneumonia", "SCT", "233604007"),
        ("Pneumothorax", "SCT", "36118008"),
        ("Effusion", "SCT", "60046008"),  # pleural effusion
        ("Cardiomegaly", "SCT", "287272002"),
        ("Nodules", "SCT", "27925004"),
        ("meningioma", "SCT", "393566004"),
        ("pituitary", "SCT", "254956000"),
        ("hyperplasia", "SCT", "76197007"),
    ],
)
def test_known_class_names_get_their_standard_code(name, scheme, code):
    concept = lookup(name)
    assert (concept.scheme, concept.code, concept.fallback) == (scheme, code, False)


def test_retinamnist_grades_are_coded_from_the_source_only():
    coded = concepts_for(["0", "1", "2", "3", "4"], "medmnist:retinamnist@64")
    assert [c.code for c in coded.values()] == ["LA18643-9", "LA18644-7", "LA18645-4", "LA18646-2", "LA18648-8"]
    assert all(c.scheme == "LN" for c in coded.values())
    assert lookup("2").scheme == PRIVATE_SCHEME  # a bare number means nothing without its dataset


@pytest.mark.parametrize("name", ["glioma", "notumor", "No_Tumour", "opacity", "Infiltration", "none"])
def test_unverified_names_get_a_declared_private_code(name):
    concept = lookup(name)
    assert concept.scheme == PRIVATE_SCHEME and concept.fallback and concept.meaning == name
    assert lookup("notumor").code == lookup("No_Tumour").code == "NO_TUMOR"


def test_private_codes_fit_dicom_and_stay_distinct():
    names = ["immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "immature granulocytes (other)"]
    codes = [lookup(n).code for n in names]
    assert all(len(c) <= 16 for c in codes) and codes[0] != codes[1]


def test_overrides_win_and_must_name_the_models_classes():
    mine = {"scheme": "RADLEX", "code": "RID5350", "meaning": "pneumonia"}
    coded = concepts_for(["normal", "pneumonia"], overrides={"pneumonia": mine})
    assert coded["pneumonia"].code == "RID5350" and coded["normal"].code == "17621005"
    with pytest.raises(MedlensError, match="does not have: tumour"):
        concepts_for(["normal"], overrides={"tumour": mine})
    with pytest.raises(MedlensError, match="unknown scheme 'ICD10'"):
        concepts_for(["normal"], overrides={"normal": {**mine, "scheme": "ICD10"}})


def test_codes_file_is_checked_with_one_line_errors(tmp_path):
    good = tmp_path / "codes.json"
    good.write_text(json.dumps({"pneumonia": {"scheme": "SCT", "code": "233604007", "meaning": "Pneumonia"}}))
    assert read_overrides(good)["pneumonia"]["code"] == "233604007"
    for text, message in [
        ("{", "not readable JSON"),
        ("[1]", "must map class names"),
        ('{"a": {"scheme": "SCT", "code": "1"}}', "code for class 'a': meaning"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(MedlensError, match=message) as e:
            read_overrides(bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_card_carries_codes_and_older_cards_get_them_from_the_table(tmp_path):
    path = tmp_path / "model.json"
    override = {"normal": {"scheme": "SCT", "code": "17621005", "meaning": "Normal", "fallback": False}}
    write_card(path, card_from_dict({**CARD, "codes": concepts_for(CARD["class_names"], overrides=override)}))
    assert read_json(path)["codes"]["pneumonia"] == {
        "scheme": "SCT",
        "code": "233604007",
        "meaning": "Pneumonia",
        "fallback": False,
    }
    assert read_card(path).codes["normal"].code == "17621005"
    write_json(path, CARD)  # written before cards had codes (schema 1 all the same)
    old = read_card(path)
    assert old.schema_version == 1 and old.codes["pneumonia"].code == "233604007"


def test_card_codes_must_match_its_classes():
    with pytest.raises(MedlensError, match="codes must name each class"):
        card_from_dict({**CARD, "codes": {"normal": lookup("normal").model_dump()}})


def test_train_refuses_a_bad_codes_file_in_one_line(cli, tmp_path):
    bad = tmp_path / "codes.json"
    bad.write_text('{"normal": {"scheme": "ICD10", "code": "Z00", "meaning": "normal"}}')
    code, _, err = cli("train", "synthetic:chest2d", "--out", tmp_path / "run", "--codes", bad)
    assert code == 2 and "unknown scheme 'ICD10'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_segmentation_structures_have_snomed_codes_from_the_dicom_dictionary():
    from medlens.inference.codes import lookup

    assert (lookup("vessel").scheme, lookup("vessel").code) == ("SCT", "59820001")
    assert (lookup("Hippocampus").scheme, lookup("Hippocampus").code) == ("SCT", "5366008")
