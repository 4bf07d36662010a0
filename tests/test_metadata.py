"""Metadata CSV validation: every row is a record or a reject with a reason."""
import pytest

from lesionspark.dataset.metadata import MetadataError, parse_metadata

HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization\n"


def test_genuine_file_parses_completely(genuine_dir):
    text = (genuine_dir / "HAM10000_metadata.csv").read_text()
    records, rejects = parse_metadata(text, "genuine")
    assert len(records) == 10015 and rejects.empty
    assert records["dx"].value_counts().to_dict() == {
        "nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
    assert records["age"].isna().sum() == 57  # genuine empty ages stay missing, not 0
    assert set(records.loc[records["dx"] == "mel", "malignant"]) == {1}
    assert set(records.loc[records["dx"] == "nv", "label"]) == {5}


def test_bad_rows_are_rejected_with_reasons():
    text = HEADER + "\n".join([
        "L1,I1,nv,histo,40,male,back",
        "L2,I2,xyz,histo,40,male,back",          # unknown dx
        "L3,I3,mel,histo,40,male",                # malformed: 6 fields
        "L4,I4,mel,histo,forty,male,back",        # invalid age
        "L5,,bkl,histo,50,female,face",           # missing image_id
        "L6,I6,bcc,histo,60,female,face",
        "L6,I6,bcc,histo,60,female,face",         # identical repeat: first kept
        "L7,I7,df,histo,60,female,face",
        "L7,I7,vasc,histo,60,female,face",        # conflicting repeat: both rejected
        "",                                        # blank line: not a row
        "L8,I8,NV,consensus,,unknown,unknown",    # upper-case dx, empty age
    ]) + "\n"
    records, rejects = parse_metadata(text, "m.csv")
    assert sorted(records["image_id"]) == ["I1", "I6", "I8"]
    assert records.set_index("image_id").loc["I8", "dx"] == "nv"
    reasons = sorted(zip(rejects["image_id"].fillna("-"), rejects["reason"]))
    assert reasons == [("-", "missing_field"), ("I2", "unknown_dx"), ("I3", "malformed_csv_row"),
                       ("I4", "invalid_age"), ("I6", "duplicate_image_id"), ("I7", "duplicate_image_id"),
                       ("I7", "duplicate_image_id")]
    assert all(s.startswith("m.csv:") for s in rejects["source"])
    assert len(records) + len(rejects) == 10  # every data row accounted for


def test_header_without_required_columns_is_a_clear_error():
    with pytest.raises(MetadataError, match="dx"):
        parse_metadata("lesion_id,image_id\nL1,I1\n", "m.csv")
    with pytest.raises(MetadataError, match="empty"):
        parse_metadata("", "m.csv")
