"""The LLP data model: parsing, quirks, errors that name file and line, and writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from avvp_pipe.pipeline.cli import cli
from avvp_pipe.core.errors import EXIT_INPUT, AnnotationError, AvvpError
from avvp_pipe.pipeline.llp.annotations import CLASSES, Clip, clip_id, load_annotations, write_annotations

WEAK = "filename\tevent_labels\n"
DENSE = "filename\tonset\toffset\tevent_labels\n"


def make_folder(tmp_path: Path, **overrides: str) -> Path:
    """A tiny valid annotation folder; ``overrides`` replace whole files by name."""
    files = {
        "AVVP_train.csv": WEAK + "aaaaaaaaaaa_0_10\tSpeech,Dog\nbbbbbbbbbbb_10_20\tCar\n",
        "AVVP_val_pd.csv": WEAK + "ccccccccccc_0_10\tCat\n",
        "AVVP_test_pd.csv": WEAK + "ddddddddddd_30_40\tSpeech,Banjo\n-eeeeeeeeee_5.5_15.5\tDog\n",
        "AVVP_eval_audio.csv": DENSE
        + "ddddddddddd_30_40\t0\t4\tSpeech\n"
        + "ddddddddddd_30_40\t6\t10\tBanjo\n"
        + "ddddddddddd_30_40\t9\t9\tSpeech\n"  # onset >= offset: marks nothing
        + "eeeeeeeeee_5.5_15.5\t0\t10\tDog\n"  # leading '-' stripped: unknown clip
        + "ccccccccccc_0_10\t2\t3\tCat\n",
        "AVVP_eval_visual.csv": DENSE + "ddddddddddd_30_40\t5\t10\tBanjo\neeeeeeeeee_5.5_15.5\t0\t10\tDog\n",
    }
    files.update(overrides)
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_clip_id_accepts_every_naming():
    assert clip_id("BjCEufrlXm4") == "BjCEufrlXm4"
    assert clip_id("BjCEufrlXm4_20_30") == "BjCEufrlXm4"
    assert clip_id("/videos/BjCEufrlXm4_20_30.mp4") == "BjCEufrlXm4"
    assert clip_id("AP0061o0Nvk_101.8_111.8") == "AP0061o0Nvk"
    assert clip_id("-AbC_dEf-12.npy") == "-AbC_dEf-12"
    with pytest.raises(AvvpError, match="11-character"):
        clip_id("short_1_2")


def test_small_folder_parses_and_counts_quirks(tmp_path):
    ann = load_annotations(make_folder(tmp_path))
    assert ann.split_ids("train") == ["aaaaaaaaaaa", "bbbbbbbbbbb"]
    assert ann.split_ids("test") == ["ddddddddddd", "-eeeeeeeeee"]
    weak = ann.weak_labels("train")
    assert weak.shape == (2, 25)
    assert weak[0, CLASSES.index("Speech")] == 1 and weak[0, CLASSES.index("Dog")] == 1 and weak[0].sum() == 2
    audio = ann.dense("test", "audio")
    assert audio.shape == (2, 25, 10)
    speech, banjo = CLASSES.index("Speech"), CLASSES.index("Banjo")
    np.testing.assert_array_equal(audio[0, speech], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(audio[0, banjo], [0] * 6 + [1] * 4)
    assert audio[1].sum() == 0  # the row for the stripped id names no known clip
    visual = ann.dense(["ddddddddddd_30_40"], "visual")
    np.testing.assert_array_equal(visual[0, banjo], [0] * 5 + [1] * 5)
    assert ann.quirks["audio_rows_onset_ge_offset"] == 1
    assert ann.quirks["audio_rows_unknown_clip"] == 1
    assert ann.quirks["visual_rows_unknown_clip"] == 1
    summary = ann.summary()
    assert summary["clips"] == {"train": 2, "val": 1, "test": 2, "total": 5}
    assert summary["dense_coverage"]["test"] == {"audio": 1, "visual": 1, "audio_visual": 1}
    assert summary["dense_coverage"]["val"] == {"audio": 1, "visual": 0, "audio_visual": 0}


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("AVVP_train.csv", "file\tlabels\naaaaaaaaaaa_0_10\tSpeech\n", r"AVVP_train.csv:1: expected header"),
        ("AVVP_train.csv", WEAK + "aaaaaaaaaaa_0_10\tSpeach\n", r"AVVP_train.csv:2: unknown class 'Speach'"),
        ("AVVP_train.csv", WEAK + "aaaaaaaaaaa_0_10\n", r"AVVP_train.csv:2: expected 2 tab-separated fields"),
        ("AVVP_train.csv", WEAK + "aaaaaaaaaaa\tSpeech\n", r"AVVP_train.csv:2: filename 'aaaaaaaaaaa'"),
        ("AVVP_val_pd.csv", WEAK + "ccccccccccc_0_10\tCat\nccccccccccc_0_10\tDog\n", r"AVVP_val_pd.csv: clip .* appears twice"),
        ("AVVP_test_pd.csv", WEAK + "aaaaaaaaaaa_0_10\tCat\n", r"AVVP_test_pd.csv: clip .* appears twice"),
        ("AVVP_eval_audio.csv", DENSE + "ddddddddddd_30_40\tzero\t4\tSpeech\n", r"AVVP_eval_audio.csv:2: onset/offset must be integer"),
        ("AVVP_eval_audio.csv", DENSE + "ddddddddddd_30_40\t0\t11\tSpeech\n", r"AVVP_eval_audio.csv:2: onset/offset must lie in 0..10"),
        ("AVVP_eval_visual.csv", DENSE + "ddddddddddd_30_40\t0\t4\tMoose\n", r"AVVP_eval_visual.csv:2: unknown class 'Moose'"),
        ("AVVP_eval_visual.csv", "", r"AVVP_eval_visual.csv:1: expected header"),
    ],
    ids=["header", "unknown-class", "short-row", "bad-filename", "duplicate", "duplicate-across-splits",
         "non-integer", "out-of-range", "dense-unknown-class", "empty-file"],
)
def test_broken_files_name_file_and_line(tmp_path, name, text, match):
    with pytest.raises(AnnotationError, match=match):
        load_annotations(make_folder(tmp_path, **{name: text}))


def test_missing_file_is_one_clear_error(tmp_path):
    folder = make_folder(tmp_path)
    (folder / "AVVP_val_pd.csv").unlink()
    with pytest.raises(AnnotationError, match=r"AVVP_val_pd.csv: file not found"):
        load_annotations(folder)


def test_cli_reports_broken_file_without_traceback(tmp_path):
    folder = make_folder(tmp_path, **{"AVVP_train.csv": WEAK + "aaaaaaaaaaa_0_10\tSpeach\n"})
    result = CliRunner().invoke(cli, ["labels", "summary", "--annotations", str(folder)])
    assert result.exit_code == EXIT_INPUT
    assert "AVVP_train.csv:2: unknown class" in result.output
    assert "Traceback" not in result.output


def test_cli_summary_json(tmp_path):
    folder = make_folder(tmp_path / "ann")
    out = tmp_path / "summary.json"
    result = CliRunner().invoke(cli, ["labels", "summary", "--annotations", str(folder), "--json", str(out)])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(out.read_text())
    assert data["clips"]["test"] == 2
    assert "audio_rows_onset_ge_offset" in result.output


def test_write_then_read_round_trip(tmp_path):
    clips = [Clip("aaaaaaaaaaa", "aaaaaaaaaaa_0_10", "train", (0, 3)),
             Clip("bbbbbbbbbbb", "bbbbbbbbbbb_10_20", "val", (4,)),
             Clip("ccccccccccc", "ccccccccccc_20_30", "test", (9, 10))]
    grid_b = np.zeros((25, 10), np.uint8)
    grid_b[4, 2:5] = 1
    grid_b[4, 7:10] = 1
    grid_c = np.zeros((25, 10), np.uint8)
    grid_c[9, :] = 1
    write_annotations(tmp_path, clips, {"audio": {"bbbbbbbbbbb": grid_b, "ccccccccccc": grid_c},
                                        "visual": {"ccccccccccc": grid_c}})
    ann = load_annotations(tmp_path)
    np.testing.assert_array_equal(ann.dense(["bbbbbbbbbbb"], "audio")[0], grid_b)
    np.testing.assert_array_equal(ann.dense(["ccccccccccc"], "visual")[0], grid_c)
    assert ann.clips["aaaaaaaaaaa"].labels == (0, 3)
    assert (tmp_path / "AVVP_eval_audio.csv").read_text().count("\n") == 1 + 3  # header + 3 runs


def test_real_files_match_the_facts(real_llp):
    ann = load_annotations(real_llp)
    summary = ann.summary()
    assert summary["clips"] == {"train": 10000, "val": 649, "test": 1200, "total": 11849}
    assert summary["dense_coverage"]["test"] == {"audio": 1194, "visual": 1079, "audio_visual": 1026}
    assert summary["labels_per_clip"]["train"] == {1: 4032, 2: 5879, 3: 89}
    assert ann.quirks["audio_unknown_clips"] == 8
    assert ann.quirks["visual_unknown_clips"] == 7
    assert ann.quirks["audio_rows_onset_ge_offset"] == 6


def test_real_pre2024_audio_file_loads(real_llp):
    ann = load_annotations(real_llp, audio_file="AVVP_eval_audio_pre2024.csv")
    assert ann.summary()["clips"]["test"] == 1200
    assert ann.quirks["audio_unknown_clips"] == 10
