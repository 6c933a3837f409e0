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
