"""Real-dataset loaders on tiny fixtures written in each dataset's real format (tests/fixtures/real)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import pytest  # noqa: E402
from config_helpers import REAL_FIXTURES as FIX  # noqa: E402
from config_helpers import loader_cfg as cfg_for  # noqa: E402
from PIL import Image  # noqa: E402

from grpo_vqa.data.images import DataError  # noqa: E402
from grpo_vqa.data.real import LOADERS, load_items  # noqa: E402
from grpo_vqa.data.real import common as real_common  # noqa: E402
from grpo_vqa.data.real.drivingvqa import reasoning_with_boxes  # noqa: E402
from grpo_vqa.data.real.vsr import subj_obj_from_caption  # noqa: E402
from grpo_vqa.data.schema import REQUIRED_COLUMNS, TASKS  # noqa: E402


def copy_fixture(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(FIX / name, dest)
    return dest


def rewrite_jsonl(path: Path, edit) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    edit(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_fixture_is_small():
    size = sum(p.stat().st_size for p in FIX.rglob("*") if p.is_file())
    assert size < 300_000


@pytest.mark.parametrize(
    "name,split,n,task",
    [
        ("vsr", "train", 10, "relation"),
        ("vsr", "val", 2, "relation"),
        ("rel3d", "train", 4, "relation"),
        ("spatialsense", "train", 3, "relation"),
        ("drivingvqa", "train", 4, "grounding"),
        ("aokvqa", "train", 2, "grounding"),
        ("mm_open_r1", "train", 4, "math"),
    ],
)
def test_every_loader_produces_the_common_schema(name, split, n, task, tmp_path):
    items = load_items(
        name, cfg_for(name, cache_dir=str(tmp_path / "cache")), split, tmp_path / "img", seed=0
    )
    assert len(items) == n
    assert len({it["id"] for it in items}) == n
    for it in items:
        assert set(REQUIRED_COLUMNS) <= set(it)
        assert it["task"] == task and task in TASKS
        assert Path(it["image_path"]).is_absolute() and Path(it["image_path"]).is_file()
        Image.open(it["image_path"]).verify()
        if task == "relation":
            assert it["solution"] == ("True" if it["label"] == 1 else "False")
            assert {"caption", "relation", "subj", "obj"} <= set(it)
        if task == "grounding":
            assert len(it["choices"]) >= 2 and len(it["boxes"]) == len(it["box_labels"])
            assert set(it["solution"].split(", ")) <= {chr(65 + i) for i in range(len(it["choices"]))}


def test_loaders_registry_is_complete():
    assert set(LOADERS) == {"vsr", "rel3d", "spatialsense", "drivingvqa", "aokvqa", "mm_open_r1"}
    with pytest.raises(DataError, match="unknown real dataset 'coco'"):
        load_items("coco", {}, "train", "/tmp", 0)


# --------------------------------------------------------------------------------------------------- VSR


def test_vsr_formats_study_prompt_and_keeps_quirky_rows(tmp_path):
    items = {it["caption"]: it for it in load_items("vsr", cfg_for("vsr"), "train", tmp_path, 0)}
    car = items["The car is behind the suitcase."]
    assert car["problem"] == "Is the following statement true: The car is behind the suitcase."
    assert (car["solution"], car["label"], car["subj"], car["obj"]) == ("True", 1, "car", "suitcase")
    # vote ids stored as strings load fine; a truncated subj stays verbatim (it is the dataset's value)
    assert items["The teddy bear is facing away from the person."]["subj"] == "tedd"
    assert items["The cup is at the edge of the dining table."]["solution"] == "False"
    assert {it["relation"] for it in items.values()} >= {"left of", "on top of", "facing away from"}
    assert car["image_path"].endswith("images/000000017697.jpg")


def test_vsr_ids_are_stable_and_content_based(tmp_path):
    a = [it["id"] for it in load_items("vsr", cfg_for("vsr"), "train", tmp_path, 0)]
    b = [it["id"] for it in load_items("vsr", cfg_for("vsr"), "train", tmp_path, 1)]
    assert a == b
    assert a[0].startswith("vsr-000000017697-")
    assert a[0] != a[6]  # same image, different caption


def test_vsr_without_subj_obj_parses_them_from_the_caption(tmp_path):
    root = copy_fixture("vsr", tmp_path)
    rewrite_jsonl(root / "train.jsonl", lambda rows: [r.pop(k) for r in rows for k in ("subj", "obj")])
    items = load_items("vsr", cfg_for("vsr", root), "train", tmp_path / "img", 0)
    got = {it["caption"]: (it["subj"], it["obj"]) for it in items}
    assert got["The teddy bear is facing away from the person."] == ("teddy bear", "person")
    assert got["The cup is at the edge of the dining table."] == ("cup", "dining table")
    with pytest.raises(DataError, match="relation 'under' not found"):
        subj_obj_from_caption("The cat is on the mat.", "under", "vsr x row 1")


def test_vsr_bad_label_names_file_and_row(tmp_path):
    root = copy_fixture("vsr", tmp_path)
    rewrite_jsonl(root / "train.jsonl", lambda rows: rows[2].update(label=2))
    with pytest.raises(DataError, match=r"^vsr train\.jsonl row 3: label 2 not in \{0, 1\}$"):
        load_items("vsr", cfg_for("vsr", root), "train", tmp_path, 0)


def test_vsr_missing_column_names_file_and_row(tmp_path):
    root = copy_fixture("vsr", tmp_path)
    rewrite_jsonl(root / "dev.jsonl", lambda rows: rows[1].pop("caption"))
    with pytest.raises(DataError, match=r"^vsr dev\.jsonl row 2: missing column\(s\) caption$"):
        load_items("vsr", cfg_for("vsr", root), "val", tmp_path, 0)


def test_vsr_duplicate_ids_name_both_rows(tmp_path):
    root = copy_fixture("vsr", tmp_path)
    rewrite_jsonl(root / "train.jsonl", lambda rows: rows.append(dict(rows[1])))
    with pytest.raises(
        DataError, match=r"^vsr train\.jsonl row 11: duplicate id .*first seen at vsr train\.jsonl row 2"
    ):
        load_items("vsr", cfg_for("vsr", root), "train", tmp_path, 0)


def test_missing_image_file_is_named(tmp_path):
    root = copy_fixture("vsr", tmp_path)
    (root / "images" / "000000224670.jpg").unlink()
    with pytest.raises(DataError, match=r"vsr train\.jsonl row 3: image file not found: .*000000224670\.jpg"):
        load_items("vsr", cfg_for("vsr", root), "train", tmp_path / "img", 0)


def test_bad_config_is_reported(tmp_path):
    with pytest.raises(DataError, match="source 'web' not in"):
        load_items("vsr", cfg_for("vsr", source="web"), "train", tmp_path, 0)
    with pytest.raises(DataError, match=r"split 'val' not in splits \['test', 'train'\]"):
        load_items("drivingvqa", cfg_for("drivingvqa"), "val", tmp_path, 0)
    with pytest.raises(DataError, match="limit -1 is not"):
        load_items("vsr", cfg_for("vsr", limit=-1), "train", tmp_path, 0)
    with pytest.raises(DataError, match="rel3d config: source hub is not available"):
        load_items("rel3d", cfg_for("rel3d", source="hub"), "train", tmp_path, 0)
    with pytest.raises(DataError, match="local_dir .* is not a directory"):
        load_items("spatialsense", cfg_for("spatialsense", tmp_path / "nope"), "train", tmp_path, 0)


# -------------------------------------------------------------------------------------------- subsets


def test_limit_subset_is_seeded(tmp_path):
    def ids(seed: int) -> list[str]:
        items = load_items("vsr", cfg_for("vsr", limit=4), "train", tmp_path, seed)
        return [it["id"] for it in items]

    everything = [it["id"] for it in load_items("vsr", cfg_for("vsr"), "train", tmp_path, 0)]
    assert len(ids(0)) == 4 and set(ids(0)) <= set(everything)
    assert ids(0) == ids(0)
    assert ids(0) != ids(1)
    assert ids(0) == [i for i in everything if i in ids(0)]  # file order kept
    assert len(load_items("vsr", cfg_for("vsr", limit=99), "train", tmp_path, 0)) == 10


# ---------------------------------------------------------------------------------------------- hub


def _fixture_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_vsr_hub_path_uses_load_dataset_and_downloads_only_the_subset(tmp_path, monkeypatch):
    calls, fetched = [], []

    def fake_load_dataset(path, split=None, **kwargs):
        calls.append((path, split, kwargs))
        return datasets.Dataset.from_list(_fixture_rows(FIX / "vsr" / kwargs["data_files"][split]))

    def fake_fetch(url, dest):
        fetched.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIX / "vsr" / "images" / url.rsplit("/", 1)[1], dest)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(real_common, "fetch_url", fake_fetch)
    cfg = {**cfg_for("vsr"), "source": "hub", "hub_id": "cambridgeltl/vsr_random", "limit": 3}
    items = load_items("vsr", cfg, "val", tmp_path / "img", seed=0)
    assert calls[0][:2] == ("cambridgeltl/vsr_random", "dev")
    assert calls[0][2]["data_files"]["dev"] == "dev.jsonl"
    assert len(items) == 2 and sorted(fetched) == sorted(
        r["image_link"] for r in _fixture_rows(FIX / "vsr" / "dev.jsonl")
    )
    assert all(Path(it["image_path"]).parent == (tmp_path / "img").absolute() for it in items)
    assert any("val2017" in u for u in fetched)
    # the subset is drawn before downloading: 3 of 10 train rows -> at most 3 downloads
    fetched.clear()
    items = load_items("vsr", cfg, "train", tmp_path / "img2", seed=0)
    assert len(items) == 3 and 1 <= len(fetched) <= 3
    local = load_items("vsr", {**cfg_for("vsr"), "limit": 3}, "train", tmp_path, seed=0)
    assert [it["id"] for it in items] == [it["id"] for it in local]


def test_hub_download_failure_names_row_and_url(tmp_path, monkeypatch):
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda path, split=None, **kw: datasets.Dataset.from_list(_fixture_rows(FIX / "vsr" / "test.jsonl")),
    )

    def refuse(url, dest):
        raise OSError("network unreachable")

    monkeypatch.setattr(real_common, "fetch_url", refuse)
    cfg = {**cfg_for("vsr"), "source": "hub", "hub_id": "cambridgeltl/vsr_random"}
    with pytest.raises(
        DataError, match=r"row 1: cannot download http://images\.cocodataset\.org/.*unreachable"
    ):
        load_items("vsr", cfg, "test", tmp_path, 0)


@pytest.mark.parametrize(
    "name,hub",
    [
        ("vsr", "cambridgeltl/vsr_zeroshot"),
        ("aokvqa", "HuggingFaceM4/A-OKVQA"),
        ("mm_open_r1", "lmms-lab/multimodal-open-r1-8k-verified"),
        ("drivingvqa", "EPFL-DrivingVQA/DrivingVQA"),
    ],
)
def test_hub_offline_fails_with_one_line_naming_the_hub_id(name, hub, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = {**cfg_for(name), "source": "hub", "hub_id": hub, "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(DataError) as err:
        load_items(name, cfg, "train", tmp_path, 0)
    msg = str(err.value)
    assert hub in msg and "\n" not in msg and msg.startswith(f"{name}: cannot")


def test_aokvqa_hub_rows_with_embedded_images_are_saved_as_png(tmp_path, monkeypatch):
    rows = json.loads((FIX / "aokvqa" / "aokvqa_v1p0_train.json").read_text())
    for r in rows:
        r["image"] = str(FIX / "aokvqa" / "coco" / "train2017" / f"{r['image_id']:012d}.jpg")
    ds = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, split=None, **kw: seen.append(split) or ds)
    cfg = {**cfg_for("aokvqa"), "source": "hub", "hub_id": "HuggingFaceM4/A-OKVQA"}
    items = load_items("aokvqa", cfg, "train", tmp_path, 0)
    assert seen == ["train"]
    assert [Path(it["image_path"]).name for it in items] == [f"{it['id']}.png" for it in items]
    with Image.open(items[0]["image_path"]) as im:
        assert im.format == "PNG" and im.size == (8, 8)
    assert items[0]["solution"] == "D" and items[0]["choices"][3] == "cab"


def test_mm_open_r1_hub_path_matches_local_parquet(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    local = load_items("mm_open_r1", cfg_for("mm_open_r1", cache_dir=cache), "train", tmp_path / "a", 0)
    full = datasets.load_dataset(
        "parquet", data_files=str(FIX / "mm_open_r1" / "data" / "*.parquet"), split="train", cache_dir=cache
    )
    calls = []

    def fake_load_dataset(path, split=None, **kw):
        calls.append((path, split))
        return full.select(range(4))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = {**cfg_for("mm_open_r1"), "source": "hub", "hub_id": "lmms-lab/multimodal-open-r1-8k-verified"}
    hub = load_items("mm_open_r1", cfg, "train", tmp_path / "b", 0)
    assert calls == [("lmms-lab/multimodal-open-r1-8k-verified", "train[:4]")]
    assert [it["id"] for it in hub] == [it["id"] for it in local]
    assert hub[0]["solution"] == "$120^{\\circ}$" and hub[0]["reasoning"] == ""
    assert Path(hub[0]["image_path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mm_open_r1_split_specs_partition_the_single_split(tmp_path):
    cfg = cfg_for("mm_open_r1", cache_dir=str(tmp_path / "cache"))
    train = load_items("mm_open_r1", cfg, "train", tmp_path, 0)
    test = load_items("mm_open_r1", cfg, "test", tmp_path, 0)
    assert len(train) == 4 and len(test) == 2
    assert not {it["id"] for it in train} & {it["id"] for it in test}


# --------------------------------------------------------------------------------- Rel3D, SpatialSense


def test_rel3d_and_spatialsense_share_the_prompt_wording(tmp_path):
    rel = load_items("rel3d", cfg_for("rel3d"), "train", tmp_path, 0)
    assert rel[0]["problem"] == "Chair left of Table?" and rel[0]["solution"] == "True"
    assert [it["label"] for it in rel] == [1, 0, 1, 0]  # true/false and 1/0 labels both accepted
    assert rel[0]["id"] != rel[1]["id"]
    ss = load_items("spatialsense", cfg_for("spatialsense"), "train", tmp_path, 0)
    assert [it["problem"] for it in ss] == [
        "cat on ground?",
        "cat to the left of mirror?",
        "cat under mirror?",
    ]
    assert [it["solution"] for it in ss] == ["True", "True", "False"]
    assert ss[0]["id"] == "spatialsense-59fbffe4f25c8070bb77ec42"
    assert "/images/flickr/" in ss[0]["image_path"]
    nyu = load_items("spatialsense", cfg_for("spatialsense"), "test", tmp_path, 0)
    assert "/images/nyu/" in nyu[0]["image_path"]


def test_rel3d_bad_label_names_row(tmp_path):
    root = copy_fixture("rel3d", tmp_path)
    path = root / "data" / "c_0.9_c_0.1.json"
    data = json.loads(path.read_text())
    data["train"][1]["label"] = "yes"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"^rel3d c_0\.9_c_0\.1\.json train row 2: label 'yes' not in"):
        load_items("rel3d", cfg_for("rel3d", root), "train", tmp_path, 0)


def test_spatialsense_missing_subject_name_names_relation(tmp_path):
    root = copy_fixture("spatialsense", tmp_path)
    data = json.loads((root / "annotations.json").read_text())
    del data[0]["annotations"][2]["subject"]["name"]
    (root / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations\.json image 1 relation 3: subject has no name"):
        load_items("spatialsense", cfg_for("spatialsense", root), "train", tmp_path, 0)


# ------------------------------------------------------------------------------------------ DrivingVQA


def test_drivingvqa_items_boxes_reasoning_and_filters(tmp_path):
    items = {it["id"]: it for it in load_items("drivingvqa", cfg_for("drivingvqa"), "train", tmp_path, 0)}
    assert "drivingvqa-1001" not in items  # two-question item dropped by single_question_only
    it = items["drivingvqa-2328"]
    assert it["boxes"] == [[9.5, 5.2, 14.5, 7.7], [2.0, 1.0, 5.0, 5.0]]
    assert it["box_labels"] == ["deceleration lane", "exit sign"]
    assert it["reasoning"] == "A 10,5,15,8 deceleration lane lets me exit. An 2,1,5,5 exit sign shows it."
    assert it["problem"].endswith("(A) slow down now\n(B) wait") and it["solution"] == "A"
    assert items["drivingvqa-3414"]["solution"] == "A, B"  # several correct letters, sorted
    assert items["drivingvqa-1003"]["image_path"].endswith("images/1003.jpg")  # first of two images
    assert items["drivingvqa-1003"]["reasoning"] == "Pedestrian crossing."  # no interleaved text
    assert cfg_for("drivingvqa")["max_pixels"] == 3_686_400  # the schema's default: the study's filter
    small = load_items("drivingvqa", cfg_for("drivingvqa", max_pixels=1000), "train", tmp_path, 0)
    assert "drivingvqa-1002" not in {i["id"] for i in small} and len(small) == 3  # 64x36 image dropped
    both = load_items("drivingvqa", cfg_for("drivingvqa", single_question_only=False), "train", tmp_path, 0)
    multi = next(i for i in both if i["id"] == "drivingvqa-1001")
    assert multi["problem"].startswith("Can I overtake?\nShould I signal?") and multi["solution"] == "B, C"


def test_drivingvqa_reasoning_rewrite():
    text = "The **bicycle sign** [766.38, 52.65, 36.16, 39.36] allows bikes; **note** this."
    assert reasoning_with_boxes(text) == "The 766,53,803,92 bicycle sign allows bikes; note this."


def test_drivingvqa_answer_outside_choices_names_id(tmp_path):
    root = copy_fixture("drivingvqa", tmp_path)
    data = json.loads((root / "test.json").read_text())
    data["4001"]["true_answers"] = ["C"]
    (root / "test.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"^drivingvqa test\.json id 4001: true_answers \['C'\] not"):
        load_items("drivingvqa", cfg_for("drivingvqa", root), "test", tmp_path, 0)


def test_drivingvqa_hub_reads_the_snapshot(tmp_path, monkeypatch):
    import huggingface_hub

    asked = []

    def fake_snapshot(repo_id, repo_type):
        asked.append((repo_id, repo_type))
        return str(FIX / "drivingvqa")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    cfg = {**cfg_for("drivingvqa"), "source": "hub", "hub_id": "EPFL-DrivingVQA/DrivingVQA"}
    items = load_items("drivingvqa", cfg, "test", tmp_path, 0)
    assert asked == [("EPFL-DrivingVQA/DrivingVQA", "dataset")]
    assert [it["id"] for it in items] == ["drivingvqa-4001"] and items[0]["boxes"] == [[1.0, 1.0, 3.0, 3.0]]


# ---------------------------------------------------------------------------------------------- A-OKVQA


def test_aokvqa_local_letters_rationales_and_unlabelled_test(tmp_path):
    items = load_items("aokvqa", cfg_for("aokvqa"), "train", tmp_path, 0)
    assert items[0]["id"] == "aokvqa-22MexNkBPpdZGX6sxbxVBH" and items[0]["solution"] == "D"
    assert items[0]["reasoning"] == "A train would not be on the street."
    assert items[0]["image_path"].endswith("coco/train2017/000000299207.jpg") and items[0]["boxes"] == []
    both = load_items("aokvqa", cfg_for("aokvqa", rationales="all"), "train", tmp_path, 0)
    assert both[1]["reasoning"] == "He is smoking. Smoke. It is lit."
    val = load_items("aokvqa", cfg_for("aokvqa"), "test", tmp_path, 0)
    assert val[0]["image_path"].endswith("coco/val2017/000000461751.jpg") and val[0]["solution"] == "A"
    cfg = cfg_for("aokvqa", splits={"test": "test"})
    with pytest.raises(DataError, match=r"aokvqa_v1p0_test\.json row 1: no correct_choice_idx"):
        load_items("aokvqa", cfg, "test", tmp_path, 0)
