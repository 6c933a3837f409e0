"""``pgnet-weights``: the known weights files, where each comes from, and fetching them.

``pgnet-weights list`` names the released PGNet checkpoint and the ImageNet backbones with their
pages, URLs, file names and SHA-256; ``pgnet-weights get NAME...`` downloads those with a direct URL
(resumable, hash-checked, renamed into place when whole) and says, for the others or when the
network is out of reach, exactly which file to fetch and where to put it; ``pgnet-weights --sha256
FILE...`` prints the SHA-256 of files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pgnet.cli.common import NothingDoneError, build_command_parser, run_command

PROG = "pgnet-weights"


def build_parser() -> argparse.ArgumentParser:
    """``list``, ``get NAME... [--to DIR]``, ``--sha256 FILE...``."""
    parser = build_command_parser(
        PROG,
        "The weights files PGNet uses: where each comes from, and fetching them. The known files can be "
        "replaced or added to by a JSON file named in PGNET_WEIGHTS_REGISTRY (a mirror).",
        "Example: pgnet-weights get resnet18-5c106cde.pth   (into pretrained/)",
        "exit status: 0 done; 1 a file is still to be fetched by hand (the message says from where and "
        "where to put it); 2 usage error",
    )
    parser.add_argument("--sha256", nargs="+", metavar="FILE", help="print the SHA-256 of these files")
    commands = parser.add_subparsers(dest="command", metavar="{list,get}")
    commands.add_parser("list", help="the known files: official page or URL, destination and SHA-256")
    get = commands.add_parser("get", help="download known files (or URLs), or say how to fetch them by hand")
    get.add_argument("names", nargs="+", metavar="NAME", help="a known file name (see list), or a URL")
    get.add_argument("--to", metavar="DIR", help="put the files here (default: where the README expects each)")
    get.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run; the exit statuses are in ``--help``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command and not args.sha256:
        parser.error("give list, get NAME... or --sha256 FILE...")
    return run_command(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from pgnet.models.hub import known_files, sha256_of

    for path in args.sha256 or ():
        print(f"{sha256_of(path)}  {path}")
    if args.command == "list":
        for entry in known_files().values():
            print(f"{entry.name}\n  {entry.what}\n  from: {entry.url or entry.page}"
                  + (f"\n  page: {entry.page}" if entry.url else "")
                  + f"\n  put at: {entry.destination}\n  SHA-256: {entry.hash_note}")
    elif args.command == "get":
        missing = [name for name in args.names if not _get(name, args)]
        if missing:
            raise NothingDoneError(f"{len(missing)} of {len(args.names)} files still to fetch: {', '.join(missing)}")
    return 0


def _get(name: str, args: argparse.Namespace) -> bool:
    """Fetch one file (or check the one there); False when it must still be fetched by hand."""
    from tqdm import tqdm

    from pgnet.errors import UserError
    from pgnet.models.hub import KnownFile, download, hash_problem, known_files, manual_instructions, sha256_of

    files = known_files()
    if name in files:
        entry = files[name]
    elif "://" in name:
        base = name.rstrip("/").rsplit("/", 1)[-1]
        entry = files.get(base) or KnownFile(base, base, page=name, destination=base)
        entry = KnownFile(entry.name, entry.what, entry.page, entry.destination, name, entry.sha256,
                          entry.sha256_prefix)
    else:
        raise UserError(f"unknown weights file {name!r}; known: {', '.join(files)} (or give a URL)")
    destination = Path(args.to) / entry.name if args.to else Path(entry.destination)
    if destination.is_file():
        problem = hash_problem(destination, entry)
        if problem:
            print(f"{destination}: not the released {entry.name} ({problem}); remove it, then: "
                  f"pgnet-weights get {name}", file=sys.stderr)
            return False
        checked = "SHA-256 as published" if entry.sha256 or entry.sha256_prefix else f"SHA-256 {sha256_of(destination)}"
        print(f"{destination}: already there ({checked})")
        return True
    if not entry.url:
        print(f"{entry.name}: no direct download; {manual_instructions(entry, destination)}, then run this "
              "command again to check it", file=sys.stderr)
        return False
    try:
        with tqdm(total=None, unit="B", unit_scale=True, desc=entry.name, disable=args.no_progress) as bar:
            def progress(done: int, total: int | None) -> None:
                bar.total = total
                bar.update(done - bar.n)

            download(entry.url, destination, entry, progress=progress)
    except UserError as error:
        print(f"{entry.name}: {error}", file=sys.stderr)
        return False
    print(f"wrote {destination} ({destination.stat().st_size / 2**20:.1f} MiB, SHA-256 {sha256_of(destination)}"
          + (", as published)" if entry.sha256 or entry.sha256_prefix else ")"))
    return True


if __name__ == "__main__":  # python -m pgnet.cli.weights
    sys.exit(main())
