import pytest

from fromscratch.data.voc import load_voc
from fromscratch.errors import DataError

XML = """<annotation><filename>{name}.jpg</filename><size><width>100</width><height>80</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>50</xmax><ymax>60</ymax></bndbox></object>
<object><name>person</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox></object>
</annotation>"""


def _voc(tmp_path, xml=XML):
    root = tmp_path / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations" / "000001.xml").write_text(xml.format(name="000001"))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n")
    return root


def test_voc_records(tmp_path):
    root = _voc(tmp_path)
    for src in (root, root / "ImageSets" / "Main" / "trainval.txt"):
        ds = load_voc(src)
        r = ds.records[0]
        assert ds.class_names[11] == "dog" and r.labels.tolist() == [12, 15]
        assert r.boxes[0].tolist() == [10, 20, 50, 60]  # 1-based inclusive -> 0-based xyxy
        assert r.difficult.tolist() == [False, True]
        assert (r.width, r.height) == (100, 80)
        assert r.file_name.endswith("JPEGImages/000001.jpg")


def test_voc_missing_tag_names_file_object_and_tag(tmp_path):
    root = _voc(tmp_path, XML.replace("<ymax>60</ymax>", ""))
    with pytest.raises(DataError, match=r"000001\.xml, object 0, field 'ymax': missing required tag <ymax>"):
        load_voc(root)


def test_several_sources_concatenate(tmp_path):
    from fromscratch.data.sources import load_sources

    a, b = _voc(tmp_path / "a"), _voc(tmp_path / "b")
    ds = load_sources([str(a / "ImageSets" / "Main" / "trainval.txt"), str(b)], check_images=False)
    assert [r.image_id for r in ds.records] == [1, 2] and ds.records[1].ann_ids == [3, 4]
    assert ds.records[0].file_name.startswith(str(a)) and ds.records[1].file_name.startswith(str(b))
