"""`ttm-data check`: what a loader would read from a BUT-PPG folder, and what the download left there."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ttm_experiments.data.fetch import BUTPPG, CHECKSUMS, STAGING, parse_checksums
from ttm_experiments.errors import DataError


def require_butppg_root(root: Path) -> None:
    """DataError naming the missing file when ``root`` is not a BUT-PPG folder."""
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise DataError(
            f"{root} {what}: give the BUT-PPG folder (the one that holds {BUTPPG.required[0]}); "
            f"to download it: ttm-data fetch butppg {root}"
        )
    for name in BUTPPG.required:
        if not (root / name).is_file():
            below = sorted(p.parent for p in root.glob(f"*/{name}"))
            hint = f"; it is in {below[0]}: ttm-data check {below[0]}?" if below else ""
            raise DataError(
                f"{root} is not a BUT-PPG folder: {name} is missing{hint}. Fix: point at the folder that "
                f"holds {', '.join(BUTPPG.required)} and the record folders, or download it: "
                f"ttm-data fetch butppg {root}"
            )


def butppg_report(root: Path, task: str, colours: Sequence[str], window_length: int) -> dict:
    """The BUT-PPG loader's own report on ``root`` (read into a throw-away cache), plus download completeness.

    Missing record folders and NaN windows are counted here (the loader's ``skip`` / ``drop`` modes) rather than
    stopping the check; the report says what ttm-train's defaults would do with them.
    """
    import tempfile

    require_butppg_root(root)  # before the imports below (hydra, scipy, wfdb): a wrong path fails at once

    from ttm_experiments.config.schema import MissingRecords, NonFinite
    from ttm_experiments.data.butppg import Settings, load_butppg

    settings = Settings(
        root=str(root),
        task=task,
        colours=tuple(colours),
        window_length=window_length,
        duration_s=10.0,
        nonfinite=NonFinite.drop,  # counted in the report rather than stopping the check
        missing_records=MissingRecords.skip,
    )
    with tempfile.TemporaryDirectory(prefix="ttm-data-check-") as cache:
        report = dict(load_butppg(settings, cache_dir=Path(cache)).report)
    report["download"] = _download_state(root)
    return report


def _download_state(root: Path) -> dict:
    state: dict = {"partial_fetch_left": (root / STAGING).is_dir()}
    if (root / CHECKSUMS).is_file():
        try:
            listed = parse_checksums((root / CHECKSUMS).read_text(encoding="utf-8"), str(root / CHECKSUMS))
        except (DataError, UnicodeDecodeError):
            return state
        missing = sorted(p for p in listed if not (root / p).is_file())
        state.update(
            listed=len(listed),
            missing=len(missing),
            missing_examples=missing[:5],
            loader_files_missing=sum(
                1 for p in missing if re.fullmatch(BUTPPG.loader_files, p) or p in BUTPPG.required
            ),
        )
    return state


def format_report(root: Path, report: dict, task: str, colours: Sequence[str]) -> str:
    counts = dict(report.get("counts", {}))
    lines = [
        f"BUT-PPG at {root} (as `ttm-train dataset=butppg dataset.root={root}` reads it: task {task}, "
        f"channels {','.join(colours)})"
    ]

    def row(name: str, value) -> None:
        lines.append(f"  {name + ':':<30}{value}")

    row("records listed", counts.pop("records_listed", "?"))
    row("records used", f"{counts.pop('records_used', '?')} ({counts.pop('windows', '?')} windows)")
    row("subjects", counts.pop("subjects", "?"))
    classes = {k[2:]: v for k, v in list(counts.items()) if k.startswith("n_")}
    total = sum(classes.values()) or 1
    row("classes", ", ".join(f"{name} {n} ({100 * n / total:.1f} %)" for name, n in classes.items()))
    for k in classes:
        counts.pop(f"n_{k}")
    row(
        "release-1 headers",
        f"{counts.pop('transposed_repaired', 0)} transposed repaired, "
        f"{counts.pop('interleaved_repaired', 0)} interleaved repaired",
    )
    for key, value in counts.items():
        row(key.replace("_", " "), value)
    sites = report.get("sites", {})
    if sites:
        row(
            "sites",
            "; ".join(
                f"{name} {s['windows']} windows, "
                + (f"{100 * s['good_fraction']:.0f} % good" if s.get("good_fraction") is not None else "unrated")
                for name, s in sites.items()
            ),
        )
    excluded = {k: v for k, v in report.get("excluded", {}).items() if v}
    row("excluded", sum(excluded.values()) if excluded else "none")
    for reason, n in excluded.items():
        examples = report.get("examples", {}).get(reason, [])
        lines.append(f"    {n:>6}  {reason}" + (f"  (e.g. {', '.join(map(str, examples[:5]))})" if examples else ""))
    lines += [f"  {note}" for note in report.get("notes", [])]
    lines += _download_lines(root, report.get("download", {}), excluded)
    return "\n".join(lines)


def _download_lines(root: Path, state: dict, excluded: dict) -> list[str]:
    lines = []
    if "listed" in state:
        missing = state["missing"]
        detail = (
            f", {missing} missing (e.g. {', '.join(state['missing_examples'])}); "
            f"{state['loader_files_missing']} of them read by the loader"
            if missing
            else ", all present"
        )
        lines.append(f"  {'download:':<30}{CHECKSUMS} lists {state['listed']} files{detail}")
    else:
        lines.append(f"  {'download:':<30}no {CHECKSUMS} (not fetched with ttm-data): completeness not checked")
    if state.get("partial_fetch_left") or state.get("loader_files_missing"):
        lines.append(f"note: the download is incomplete: rerun `ttm-data fetch butppg {root}` to finish it")
    if excluded.get("record folder missing"):
        lines.append("note: ttm-train stops on annotated records without a folder unless dataset.missing_records=skip")
    if any(k.startswith("windows with NaN") for k in excluded):
        lines.append("note: ttm-train stops on records with NaN samples unless dataset.nonfinite=drop")
    return lines
