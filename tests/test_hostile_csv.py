"""One bad line of a metadata CSV or side-car spoils that line only: an unterminated quote no
longer swallows every line after it, a 200 KiB field is a reject, not an uncaught ``csv.Error``;
a side-car image id that names files in two folders gives neither file another patient's values."""
import pytest

from lesionspark.dataset.clinical import drop_shared, read_sidecar
from lesionspark.dataset.metadata import parse_metadata

HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"


def _rows(n):
    return [f"HAM_{i:07d},ISIC_{i:07d},nv,histo,{20 + i % 60},female,back" for i in range(n)]


def test_an_unterminated_quote_spoils_its_own_line_only():
    rows = _rows(1000)
    rows[2] = 'HAM_0000002,ISIC_0000002,nv,"histo,45,female,back'
    records, rejects = parse_metadata("\n".join([HEADER] + rows), "meta.csv")
    assert len(records) == 999 and len(rejects) == 1
    assert rejects.iloc[0]["reason"] == "malformed_csv_row" and rejects.iloc[0]["source"] == "meta.csv:4"
    assert "ISIC_0000999" in set(records["image_id"])


def test_a_field_over_the_csv_limit_is_a_reject_not_an_abort():
    rows = _rows(10)
    rows[5] = f"HAM_0000005,ISIC_0000005,nv,histo,45,female,{'x' * (200 << 10)}"
    rows[6] = f'HAM_0000006,ISIC_0000006,nv,histo,45,female,"{"y" * (200 << 10)}"'
    records, rejects = parse_metadata("\r\n".join([HEADER] + rows), "meta.csv")
    assert len(records) == 8 and set(rejects["reason"]) == {"malformed_csv_row"} and len(rejects) == 2
    assert all("field larger than field limit" in d for d in rejects["detail"])


def test_a_malformed_side_car_line_is_skipped_alone(caplog):
    lines = ["image_id,age,sex"] + [f"ISIC_{i:07d},{30 + i % 50},male" for i in range(1000)]
    lines[4] = 'ISIC_0000003,"41,male'
    lines[9] = "ISIC_0000008,41"  # a field short: the rest empty
    with caplog.at_level("WARNING"):
        sidecar = read_sidecar("\n".join(lines))
    assert len(sidecar) == 999 and "ISIC_0000999" in sidecar and "ISIC_0000003" not in sidecar
    assert sidecar["ISIC_0000008"] == {"age": "41"}
    assert "1 malformed line(s) skipped (lines 5)" in caplog.text and "41" not in caplog.text.split("lines")[0]


@pytest.mark.spark
def test_a_side_car_id_that_names_two_files_is_dropped(spark):
    files = spark.createDataFrame([("file:/a/patient1/IMG_0001.jpg",), ("file:/a/patient2/IMG_0001.jpg",),
                                   ("file:/a/patient2/IMG_0002.jpg",)], "path string")
    sidecar = {"IMG_0001": {"age": "40"}, "IMG_0002": {"age": "70"}, "IMG_0003": {"age": "50"}}
    assert drop_shared(spark, files, sidecar) == {"IMG_0002": {"age": "70"}, "IMG_0003": {"age": "50"}}
