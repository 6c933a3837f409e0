"""Where outputs go: pictures of two folders keep their folders, and no output is written twice."""

from __future__ import annotations

import pytest

from pgnet.data.synthetic import make_sample
from pgnet.predict.output_plan import plan_outputs
from pgnet.writing import OverwriteError, check_overwrites, write_image


def test_predict_outputs_of_two_folders_with_the_same_names_keep_their_folders(tmp_path):
    for folder in ("d1", "d2"):
        for name in ("a.jpg", "b.png"):
            write_image(tmp_path / folder / name, make_sample(0, (32, 32))[0])
    jobs = plan_outputs([tmp_path / "d1", tmp_path / "d2"], tmp_path / "out")
    assert sorted(job.output.relative_to(tmp_path / "out").as_posix() for job in jobs) == [
        "d1/a.png", "d1/b.png", "d2/a.png", "d2/b.png"]
    with pytest.raises(OverwriteError, match=r"would be written more than once.*x\.png"):
        check_overwrites([(tmp_path / "x.png", tmp_path / "1.jpg"), (tmp_path / "x.png", tmp_path / "2.jpg")],
                                 [])


def test_outputs_are_never_written_where_a_second_run_would_read_them(tmp_path, capsys):
    """``pgnet-predict photos -o photos`` would put a.png beside a.jpg, which the next run reads as a
    picture: refused before any work, so a second run finds the same pictures; so are the other
    outputs a second run would list (a glob's folder, a subfolder searched recursively)."""
    from pgnet.cli.predict import main as predict_main
    from pgnet.data.io import list_images

    photos = tmp_path / "photos"
    for name in ("a.jpg", "b.jpg"):
        write_image(photos / name, make_sample(0, (32, 32))[0])
    for _ in range(2):  # a second run sees the same inputs
        # refused before the checkpoint is read (this one does not exist)
        assert predict_main([str(photos), "-o", str(photos), "-c", str(tmp_path / "none.pth"), "--device", "cpu"]) == 2
        assert "2 outputs would be written among the inputs" in capsys.readouterr().err
        assert list_images(photos) == [photos / "a.jpg", photos / "b.jpg"]
    with pytest.raises(OverwriteError, match=r"among the inputs \(e\.g\. .*photos/a\.png\)"):
        plan_outputs([f"{photos}/*"], photos)
    with pytest.raises(OverwriteError, match=r"among the inputs .*photos/masks/a\.png"):
        plan_outputs([photos], photos / "masks", recursive=True)
    assert [job.output for job in plan_outputs([photos], photos / "masks")] == [photos / "masks" / "a.png",
                                                                               photos / "masks" / "b.png"]
    assert len(plan_outputs([f"{photos}/*.jpg"], photos)) == 2  # a second run of *.jpg reads no .png
