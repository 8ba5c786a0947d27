"""``inceptionv3 predict``: inputs of every kind, rows in order and parsed back, failures kept, pictures, demo."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO, TORCHRUN_ENV, photo_paths, torchrun
from PIL import Image

from inceptionv3 import inference_model
from inceptionv3.cli import main


@pytest.fixture
def image_tree(tmp_path) -> tuple[Path, list[str]]:
    """Real photos in nested folders with mixed-case extensions, a broken file and a non-image to ignore.
    Returns the folder and the order in which predict must report it (sorted, depth first)."""
    photos = photo_paths()
    root = tmp_path / "photos"
    layout = {"a/cat.BMP": photos[1], "a/sub/parrot.Jpg": photos[5], "b/chelsea.png": photos[19]}
    for relative, source in layout.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / relative)
    (root / "b" / "broken.jpeg").write_bytes(b"\xff\xd8\xff this is not a whole jpeg")
    (root / "b" / "notes.txt").write_text("not an image")
    order = [str(root / p) for p in ("a/cat.BMP", "a/sub/parrot.Jpg", "b/broken.jpeg", "b/chelsea.png")]
    return root, order


def test_csv_rows_come_back_in_input_order_with_errors_kept(trained_like_checkpoint, image_tree, tmp_path,
                                                            monkeypatch, capsys):
    root, folder_order = image_tree
    single = str(photo_paths()[0])
    from_stdin = [str(photo_paths()[2]), str(tmp_path / "missing.jpg")]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(from_stdin) + "\n\n"))
    pattern = str(Path(photo_paths()[0]).parent / "felix_31*.jpg")
    globbed = sorted(str(p) for p in Path(photo_paths()[0]).parent.glob("felix_31*.jpg"))
    out = tmp_path / "results.csv"
    argv = ["predict", single, str(root), "-", pattern, str(tmp_path / "nothing*.png"),
            "--weights", str(trained_like_checkpoint), "--topk", "3", "--batch-size", "3", "--output", str(out)]
    assert main(argv) == 1
    rows = list(csv.DictReader(out.open()))
    expected_order = [single, *folder_order, *from_stdin, *globbed, str(tmp_path / "nothing*.png")]
    assert [r["path"] for r in rows] == expected_order
    assert list(rows[0]) == ["path", "pred_label", "pred_class", "pred_score", "top1_label", "top1_class",
                             "top1_score", "top2_label", "top2_class", "top2_score", "top3_label", "top3_class",
                             "top3_score", "error"]
    errors = {r["path"]: r["error"] for r in rows if r["error"]}
    assert set(errors) == {folder_order[2], from_stdin[1], str(tmp_path / "nothing*.png")}
    assert "corrupt or truncated" in errors[folder_order[2]] or "not a recognised" in errors[folder_order[2]]
    assert errors[from_stdin[1]] == "no such file" and errors[str(tmp_path / "nothing*.png")].startswith("no files")
    ok_rows = [r for r in rows if not r["error"]]
    reference = inference_model(trained_like_checkpoint, [r["path"] for r in ok_rows])
    for row, result in zip(ok_rows, reference, strict=True):
        assert int(row["pred_label"]) == result["pred_label"] == int(row["top1_label"])
        assert row["pred_class"] == result["pred_class"]
        assert abs(float(row["pred_score"]) - result["pred_score"]) < 1e-4  # batch 3 vs 16: oneDNN ulps
        assert float(row["top1_score"]) >= float(row["top2_score"]) >= float(row["top3_score"])
    summary = capsys.readouterr().err
    assert f"{len(ok_rows)} ok, 3 failed" in summary and "no such file" in summary
    assert main([*argv, "--allow-failures"]) == 0


def test_jsonl_objects_and_the_pictures(trained_like_checkpoint, image_tree, tmp_path):
    root, order = image_tree
    out, vis = tmp_path / "results.jsonl", tmp_path / "vis"
    assert main(["predict", str(root), "--weights", str(trained_like_checkpoint), "--output", str(out),
                 "--save-vis", str(vis), "--allow-failures"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == order
    for record in records:
        assert set(record) == {"path", "pred_label", "pred_class", "pred_score", "topk", "error"}
        if record["error"]:
            assert record["pred_label"] is None and record["topk"] == []
            continue
        assert len(record["topk"]) == 5 and record["topk"][0]["label"] == record["pred_label"]
        assert record["topk"][0]["class"] == record["pred_class"]
        scores = [t["score"] for t in record["topk"]]
        assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    pictures = sorted(p.name for p in vis.iterdir())
    assert pictures == ["cat.png", "chelsea.png", "parrot.png"]
    for name in pictures:
        with Image.open(vis / name) as picture:
            picture.load()
            assert picture.format == "PNG" and picture.width >= 900 and 400 <= picture.height <= 600
            colours = picture.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours and len(colours) > 1000  # a photo and bars, not a blank canvas


def test_text_to_stdout_and_jsonl_format_flag(trained_like_checkpoint, capsys):
    photo = str(photo_paths()[3])
    assert main(["predict", photo, "--weights", str(trained_like_checkpoint), "--topk", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == photo and lines[1].lstrip().startswith("1. ") and lines[2].lstrip().startswith("2. ")
    assert main(["predict", photo, "--weights", str(trained_like_checkpoint), "--format", "jsonl"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == photo


def test_bad_arguments_are_one_line_errors(trained_like_checkpoint, tmp_path, capsys):
    photo = str(photo_paths()[0])
    assert main(["predict", photo, "--weights", str(trained_like_checkpoint), "--topk", "0"]) == 2
    assert "--topk" in capsys.readouterr().err
    assert main(["predict", photo, "--weights", str(trained_like_checkpoint), "--output", str(tmp_path / "r.xml")]) == 2
    assert "r.xml" in capsys.readouterr().err


def test_demo_image_ships_with_attribution_and_fails_clearly_offline(tmp_path, monkeypatch, capsys,
                                                                     trained_like_checkpoint):
    demo = REPO / "demo" / "bird.jpg"
    with Image.open(demo) as image:
        assert image.format == "JPEG" and image.size == (512, 343)
    notice = (REPO / "demo" / "README.md").read_text()
    assert "CC BY 2.0" in notice and "coral_bird.bmp" in notice and "Open Images" in notice
    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path))
    monkeypatch.setenv("INCEPTIONV3_OFFLINE", "1")
    assert main(["predict", str(demo)]) == 2
    err = capsys.readouterr().err
    assert "could not get weights" in err and "--weights PATH" in err
    assert main(["predict", str(demo), "--model", "inception-v3_3rdparty_8xb32_in1k",
                 "--weights", str(trained_like_checkpoint)]) == 0
    assert capsys.readouterr().out.startswith(str(demo))


def test_cache_lists_and_clears_downloads_and_exports(tmp_path, monkeypatch, capsys):
    from inceptionv3.cli import main

    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path))
    (tmp_path / "weights.pth").write_bytes(b"w" * 3_000_000)
    export = tmp_path / "compiled" / "abc-openvino-fp32-3x299x299"
    export.mkdir(parents=True)
    (export / "model.bin").write_bytes(b"b" * 2_000_000)
    (export / "model.xml").write_bytes(b"x" * 500_000)
    assert main(["cache"]) == 0
    listing = capsys.readouterr().out
    assert f"3.0 MB  {tmp_path / 'weights.pth'}\n" in listing and f"2.5 MB  {export}\n" in listing
    assert listing.rstrip().endswith(f"5.5 MB in {tmp_path}")
    idle, busy = tmp_path / "compiled" / "abc-openvino.lock", tmp_path / "compiled" / "def-onnx.lock"
    idle.touch()
    with open(busy, "a") as held:  # a build in progress holds its lock: that one stays
        import fcntl

        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["cache", "--clear", "compiled"]) == 0
    assert "2.5 MB freed" in capsys.readouterr().out
    assert not export.exists() and (tmp_path / "weights.pth").exists()
    assert not idle.exists() and busy.exists()  # leftover locks went with their exports
    assert main(["cache", "--clear", "all"]) == 0
    assert not (tmp_path / "weights.pth").exists()


def _checkpoint_like(source: Path, dest: Path, edit=None, classes=None) -> Path:
    """A copy of an mmpretrain-layout checkpoint with its state dict edited or its class names replaced."""
    import torch

    saved = torch.load(source, weights_only=True)
    if edit:
        edit(saved["state_dict"])
    if classes is not None:
        saved["meta"]["dataset_meta"]["classes"] = classes
    torch.save(saved, dest)
    return dest


def _strict_json(line: str) -> dict:
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")
    return json.loads(line, parse_constant=refuse)


def test_nan_weights_fail_each_file_and_jsonl_stays_strict_json(trained_like_checkpoint, tmp_path, capsys):
    broken = _checkpoint_like(trained_like_checkpoint, tmp_path / "nan.pth",
                              edit=lambda state: state["backbone.fc.weight"][0].fill_(float("nan")))
    photos = [str(p) for p in photo_paths()[:2]]
    out = tmp_path / "rows.jsonl"
    assert main(["predict", *photos, "--weights", str(broken), "--output", str(out), "--backend", "eager"]) == 1
    records = [_strict_json(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == photos
    assert all("not finite" in r["error"] and r["pred_score"] is None for r in records)
    assert "0 ok, 2 failed" in capsys.readouterr().err


def test_a_topk_beyond_the_class_count_is_bounded_by_it(trained_like_checkpoint, tmp_path):
    """--topk 100000000 used to build a CSV header of 3 x 10^8 cells before the first row; the model has 1000."""
    out = tmp_path / "rows.csv"
    assert main(["predict", str(photo_paths()[0]), "--weights", str(trained_like_checkpoint), "--topk", "100000000",
                 "--backend", "eager", "--output", str(out)]) == 0
    header, row = list(csv.reader(out.open(encoding="utf-8")))
    assert len(header) == len(row) == 4 + 3 * 1000 + 1 and header[-2] == "top1000_score"


def test_names_that_are_not_utf8_are_escaped_and_no_row_is_lost(trained_like_checkpoint, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    raw_names = [b"caf\xe9.jpg", b"plain.jpg", b"\xff\xfe.jpg"]
    for raw, photo in zip(raw_names, photo_paths(), strict=False):
        shutil.copy(photo, os.path.join(os.fsencode(folder), raw))
    out = tmp_path / "rows.csv"
    assert main(["predict", str(folder), "--weights", str(trained_like_checkpoint), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(["caf\\xe9.jpg", "plain.jpg", "\\xff\\xfe.jpg"])
    assert all(r["pred_label"] and not r["error"] for r in rows)


def test_csv_cells_that_look_like_formulas_are_neutralised(trained_like_checkpoint, tmp_path, monkeypatch):
    names = ["=HYPERLINK(1).jpg", "@sum.jpg"]
    for name, photo in zip(names, photo_paths(), strict=False):
        shutil.copy(photo, tmp_path / name)
    monkeypatch.chdir(tmp_path)  # relative names, so that the cells start with = and @
    classes = [f"+cmd{i}" if i % 2 else f"-cmd{i}" for i in range(1000)]
    weights = _checkpoint_like(trained_like_checkpoint, tmp_path / "classes.pth", classes=classes)
    out = tmp_path / "rows.csv"
    assert main(["predict", *names, "--weights", str(weights), "--output", str(out), "--topk", "2"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == ["'=HYPERLINK(1).jpg", "'@sum.jpg"]
    for row in rows:
        label = int(row["pred_label"])  # numbers stay numbers
        assert row["pred_class"] == "'" + classes[label] and row["top2_class"].startswith(("'+", "'-"))
        assert 0 < float(row["pred_score"]) <= 1


def test_ctrl_c_keeps_the_rows_written_and_prints_the_summary(trained_like_checkpoint, tmp_path, monkeypatch,
                                                              capsys):
    from inceptionv3.inference import Classifier

    real_run_chunk, calls = Classifier._run_chunk, []

    def interrupt_on_second_batch(self, chunk, batch_size):
        calls.append(len(chunk))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_chunk(self, chunk, batch_size)

    monkeypatch.setattr(Classifier, "_run_chunk", interrupt_on_second_batch)
    photos = [str(p) for p in photo_paths()[:3]]
    out = tmp_path / "rows.csv"
    try:
        code = main(["predict", *photos, "--weights", str(trained_like_checkpoint), "--batch-size", "1",
                     "--output", str(out)])
    except KeyboardInterrupt:
        code = "the interrupt escaped"
    assert code == 130
    assert [r["path"] for r in csv.DictReader(out.open())] == photos[:1]
    assert "interrupted after 1 of 3 inputs: 1 ok, 0 failed" in capsys.readouterr().err


def test_a_bad_output_name_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from inceptionv3 import inference

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --output was checked")

    monkeypatch.setattr(inference, "Classifier", must_not_load)
    assert main(["predict", str(photo_paths()[0]), "--output", str(tmp_path / "rows.xlsx")]) == 2
    assert "rows.xlsx" in capsys.readouterr().err


def test_transform_input_reaches_get_model_from_predict_and_is_a_flag_of_every_loading_command(
        trained_like_checkpoint, monkeypatch):
    from inceptionv3 import weights

    seen = []
    real_get_model = weights.get_model

    def spy(*args, **kwargs):
        seen.append(kwargs.get("transform_input"))
        return real_get_model(*args, **kwargs)

    monkeypatch.setattr(weights, "get_model", spy)
    monkeypatch.setattr("inceptionv3.inference.get_model", spy)
    assert main(["predict", str(photo_paths()[0]), "--weights", str(trained_like_checkpoint),
                 "--transform-input"]) == 0
    assert seen == [True]
    from inceptionv3.cli import build_parser

    for argv in (["test", "--data", "d"], ["export", "m", "--format", "onnx", "--out", "o"], ["benchmark"],
                 ["convert", "a", "b"]):
        assert build_parser().parse_args([*argv, "--transform-input"]).transform_input is True, argv[0]


def test_max_bytes_refuses_a_large_file_and_keeps_the_others(trained_like_checkpoint, tmp_path):
    small, large = tmp_path / "small.png", tmp_path / "large.bmp"
    Image.open(photo_paths()[0]).convert("RGB").resize((80, 80)).save(small)
    shutil.copy(next(p for p in photo_paths() if p.suffix == ".bmp"), large)
    limit = small.stat().st_size + 1000
    assert large.stat().st_size > limit
    out = tmp_path / "rows.csv"
    assert main(["predict", str(small), str(large), "--weights", str(trained_like_checkpoint),
                 "--max-bytes", str(limit), "--output", str(out)]) == 1
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["error"] == "" and rows[0]["pred_label"]
    assert "limit (max_bytes)" in rows[1]["error"] and rows[1]["pred_label"] == ""


def test_test_predictions_csv_escapes_odd_names_and_formula_classes(trained_like_checkpoint, tmp_path):
    classes = [f"=cls{i}" for i in range(1000)]
    weights = _checkpoint_like(trained_like_checkpoint, tmp_path / "classes.pth", classes=classes)
    folder = tmp_path / "data" / "=cls7"
    folder.mkdir(parents=True)
    shutil.copy(photo_paths()[0], os.path.join(os.fsencode(folder), b"caf\xe9.jpg"))
    predictions = tmp_path / "preds.csv"
    assert main(["test", "--data", str(tmp_path / "data"), "--weights", str(weights), "--predictions",
                 str(predictions), "--quiet"]) == 0
    rows = list(csv.DictReader(predictions.open(encoding="utf-8")))
    assert len(rows) == 1 and rows[0]["path"].endswith("caf\\xe9.jpg") and rows[0]["label"] == "7"
    assert rows[0]["top1_class"] == "'" + classes[int(rows[0]["top1_label"])]


def test_a_bad_option_combination_is_one_line_not_a_traceback(trained_like_checkpoint, capsys):
    assert main(["predict", str(photo_paths()[0]), "--weights", str(trained_like_checkpoint),
                 "--backend", "openvino", "--precision", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "inceptionv3 predict: error: int8 needs calibration images from your data (--calibration DIR)"


@pytest.mark.slow  # a torchrun launch
def test_torchrun_predict_writes_the_one_process_csv_byte_for_byte(trained_like_checkpoint, tmp_path):
    """Two processes under torchrun (gloo, CPU): whole batches of 2 to each, rank 0 writes every row in input
    order, the unreadable file a failed row. One process (this one, at torchrun's one thread, since thread counts
    round convolutions differently) writes the same CSV, byte for byte."""
    import subprocess

    import torch

    folder = tmp_path / "in"
    folder.mkdir()
    for i, path in enumerate(photo_paths()[:5]):
        Image.open(path).convert("RGB").resize((200, 150)).save(folder / f"{i}.jpg")
    (folder / "2_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    args = ["predict", str(folder), "--weights", str(trained_like_checkpoint), "--backend", "eager", "--device", "cpu",
            "--batch-size", "2", "--workers", "1", "--allow-failures", "--quiet"]
    two = tmp_path / "two.csv"
    running = subprocess.Popen(torchrun("-m", "inceptionv3", *args, "--output", str(two)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV)  # beside the one-process run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--output", str(tmp_path / "one.csv")]) == 0
    finally:
        torch.set_num_threads(threads)
    _, stderr = running.communicate(timeout=300)
    assert running.returncode == 0, stderr[-3000:]
    assert stderr.count("5 ok, 1 failed") == 1 and "2 processes" in stderr, stderr[-3000:]
    assert two.read_bytes() == (tmp_path / "one.csv").read_bytes()
    rows = list(csv.DictReader(io.StringIO(two.read_text())))
    assert [Path(r["path"]).name for r in rows] == sorted(p.name for p in folder.iterdir())
    assert [bool(r["error"]) for r in rows] == [Path(r["path"]).name == "2_broken.jpg" for r in rows]
    # An output rank 0 cannot write stops both ranks before any image is read (it was reported after the run).
    done = subprocess.run(torchrun("-m", "inceptionv3", *args, "--output", str(tmp_path / "no-such-dir" / "rows.csv")),
                          capture_output=True, text=True, timeout=300, env=TORCHRUN_ENV)
    assert done.returncode != 0 and "error: --output" in done.stderr and "No such file" in done.stderr
    assert "ok," not in done.stderr  # no image was scored
