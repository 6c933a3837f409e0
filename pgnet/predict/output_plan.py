"""Where ``pgnet-predict`` writes each picture's and each video's output, checked before any work.

An output keeps its picture's name (suffix ``.png``) and its path under the folder, or the glob's
folder, it was found in. Pictures of one folder whose names differ only by suffix (``a.jpg``,
``a.png``) keep it (``a.jpg.png``). When pictures from different inputs would still land on the same
output (``d1/a.jpg`` and ``d2/a.jpg``), every output keeps its path relative to the inputs' common
folder instead (``out/d1/a.png``, ``out/d2/a.png``). No output may land on an input
(``pgnet.writing.check_overwrites``). Videos are found and named alike (``plan_video_outputs``), and
no picture output may land in a video's frame folder or on a video's output (``check_apart``).
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pgnet.data.io import list_files, list_images
from pgnet.errors import format_list
from pgnet.writing import OverwriteError, check_overwrites

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
VIDEO_SUFFIXES = {"mp4": ".mp4", "webm": ".webm", "prores": ".mov", "png": ""}  # ``pgnet.predict.media``


@dataclass
class FileJob:
    """One input picture and the file its output goes to."""

    source: Path
    output: Path


def _glob_root(pattern: str) -> Path:
    """The folder a glob pattern starts in: its leading components without wildcards."""
    parts = Path(pattern).expanduser().parts
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts[:-1]))
    return Path(*fixed) if fixed else Path(".")


def _outputs(found: dict[Path, tuple[Path, Path]], output_dir: Path) -> list[FileJob]:
    """Jobs for (source, relative path) entries; same-stem names of one folder keep their suffix."""
    by_output: dict[Path, list[tuple[Path, Path]]] = {}
    for path, relative in found.values():
        by_output.setdefault(relative.with_suffix(".png"), []).append((path, relative))
    jobs = []
    for relative_output, entries in by_output.items():
        for path, relative in entries:
            name = relative_output if len(entries) == 1 else relative.with_name(relative.name + ".png")
            jobs.append(FileJob(path, output_dir / name))
    return jobs


def _has_shared_outputs(jobs: list[FileJob]) -> bool:
    outputs = [os.path.normcase(os.path.abspath(job.output)) for job in jobs]
    return len(set(outputs)) != len(outputs)


def plan_outputs(sources: Iterable[str | Path], output_dir: str | Path, recursive: bool = False) -> list[FileJob]:
    """The pictures named by ``sources`` (files, folders, globs) and their output files (see the module).

    Raises FileNotFoundError for a source that names nothing, and ``OverwriteError`` (a
    FileExistsError) listing the paths when an output would be written over an input, or over another
    output (an earlier run's outputs inside a folder searched recursively count as inputs: write to
    a folder outside it).
    """
    output_dir, sources = Path(output_dir), list(sources)
    found: dict[Path, tuple[Path, Path]] = {}  # resolved source -> (source, relative path)
    roots: dict[Path, Path] = {}  # resolved source -> the folder it was found in
    for source in sources:
        source_path = Path(source).expanduser()
        root = source_path if source_path.is_dir() else source_path.parent
        if not source_path.exists():
            root = _glob_root(str(source))
        for path in list_images(source, recursive=recursive):
            key = path.resolve()
            if key not in found:
                found[key] = (path, path.relative_to(root))
                roots[key] = root
    jobs = _outputs(found, output_dir)
    if _has_shared_outputs(jobs):
        common = Path(os.path.commonpath([os.path.abspath(root) for root in roots.values()]))
        jobs = _outputs({key: (path, Path(os.path.abspath(path)).relative_to(common))
                         for key, (path, _) in found.items()}, output_dir)
    check_overwrites(((job.output, job.source) for job in jobs), found, what="output")
    check_outputs_outside_inputs([job.output for job in jobs], sources, output_dir, recursive)
    return sorted(jobs, key=lambda job: str(job.source))


def _found_again(output: Path, source: str | os.PathLike, recursive: bool) -> bool:
    """Whether listing ``source`` again (a folder, a glob; a file names only itself) would find ``output``."""
    source_path = Path(source).expanduser()
    if source_path.is_file():
        return False
    output = Path(os.path.realpath(output))
    if source_path.is_dir():
        folder = Path(os.path.realpath(source_path))
        return output.parent == folder or (recursive and output.is_relative_to(folder))
    return output.match(os.path.abspath(source_path))  # a glob pattern, component by component


def check_outputs_outside_inputs(outputs: Iterable[Path], sources: Iterable[str | os.PathLike], output_dir: Path,
                                 recursive: bool) -> None:
    """Refuse outputs that a second run with the same ``sources`` would read as inputs (masks written
    into the folder of their pictures), naming the folder and an example."""
    sources = list(sources)
    among = [output for output in outputs if any(_found_again(output, source, recursive) for source in sources)]
    if among:
        raise OverwriteError(
            f"{len(among)} outputs would be written among the inputs (e.g. {among[0]}), where a second run would "
            f"read them as inputs: choose an output folder outside the input folders, not {output_dir}"
        )


# --------------------------------------------------------------------------------------------------
# Videos


@dataclass
class VideoJob:
    """One input video and its output (a video file, or a folder of PNGs)."""

    source: Path
    output: Path


def is_video_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS and Path(path).is_file()


def list_videos(source: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Video files named by ``source`` (a video, a folder, a glob); pictures and other files ignored."""
    path = Path(source).expanduser()
    if path.is_dir():
        return list_files(path, VIDEO_EXTENSIONS, recursive=recursive)
    if path.is_file():
        return [path] if is_video_file(path) else []
    return sorted(Path(m) for m in glob.glob(str(path), recursive=recursive) if is_video_file(m))


def plan_video_outputs(
    sources: Iterable[str | os.PathLike], output_dir: str | os.PathLike, video_format: str = "mp4",
    recursive: bool = False,
) -> list[VideoJob]:
    """The videos named by ``sources`` and their outputs under ``output_dir`` in ``video_format``.

    ``clip.avi`` gives ``clip.mp4`` (``webm``: ``clip.webm``, ``prores``: ``clip.mov``, ``png``: the
    folder ``clip/``), keeping its path under the folder it was found in; two videos whose outputs
    would collide keep their suffix (``clip.avi.mp4``). Raises FileExistsError when an output would
    replace an input.
    """
    output_dir, sources = Path(output_dir), list(sources)
    suffix = VIDEO_SUFFIXES[video_format]
    found: dict[Path, tuple[Path, Path]] = {}  # resolved source -> (source, path under its folder)
    for source in sources:
        source_path = Path(source).expanduser()
        root = source_path if source_path.is_dir() else source_path.parent
        for path in list_videos(source, recursive):
            relative = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
            found.setdefault(path.resolve(), (path, relative))
    stems: dict[Path, int] = {}
    for _, relative in found.values():
        stems[relative.with_suffix("")] = stems.get(relative.with_suffix(""), 0) + 1
    jobs = []
    for path, relative in found.values():
        stem = relative.with_suffix("") if stems[relative.with_suffix("")] == 1 else relative
        output = output_dir / (str(stem) + suffix)
        if output.resolve() in found:
            raise OverwriteError(f"the output for {path} would overwrite the input {output}; choose another folder")
        jobs.append(VideoJob(path, output))
    check_outputs_outside_inputs([job.output for job in jobs if job.output.suffix], sources, output_dir, recursive)
    return sorted(jobs, key=lambda job: str(job.source))


def check_apart(picture_jobs: Iterable[FileJob], video_jobs: Iterable[VideoJob]) -> None:
    """Refuse a run where a picture's output would land on a video's output or inside a video's frame
    folder (``clip/000001.jpg`` beside ``clip.mp4`` written as PNG frames): raises ``OverwriteError``."""
    videos = {Path(os.path.abspath(job.output)): job.source for job in video_jobs}
    clashes = []
    for job in picture_jobs:
        output = Path(os.path.abspath(job.output))
        for place in (output, *output.parents):
            if place in videos:
                clashes.append(f"{job.output} (from {job.source}; the output of {videos[place]} is {place})")
                break
    if clashes:
        raise OverwriteError(f"{len(clashes)} picture outputs would land on video outputs: "
                             f"{format_list(clashes, separator='; ')}; choose another output folder or video format")
