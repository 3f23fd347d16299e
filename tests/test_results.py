"""``launcher-core results | report | link | files`` on a real local_pool sweep with failed jobs.

One sweep per module (``tests/apps/results_app.py``: 12 jobs, 4 of them failing) is launched as
a user would; every test runs the commands as separate processes (or the Python API) on it and
checks their output against what the app computes. The report is opened in Debian's chromium
(headless, through playwright) to check that it renders its plots with no JavaScript error and
loads nothing from outside the file. The other backends: tests/test_results_backends.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher_core import results
from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.apps.results_app import scores
from tests.conftest import REPO_ROOT, run_app

APP = REPO_ROOT / "tests" / "apps" / "results_app.py"
MODELS, LRS, SEEDS = ("cnn", "mlp", "broken"), (0.001, 0.01), (0, 1)
CHROMIUM = Path("/usr/bin/chromium")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher_core", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(sweep dir, what the launch printed on stderr)."""
    root = tmp_path_factory.mktemp("results")
    sweep_dir = root / "multirun"
    args = [
        "-m",
        "hydra/launcher=local_pool",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
        "model=cnn,mlp,broken",
        "lr=1e-3,1e-2",
        "seed=0,1",
    ]
    proc = run_app(APP, args, cwd=root)
    assert proc.returncode != 0 and "cannot train model=broken" in proc.stderr  # the failed jobs fail the run
    return sweep_dir, proc.stderr


def expected_jobs() -> list[tuple[str, float, int]]:
    return [(m, lr, s) for m in MODELS for lr in LRS for s in SEEDS]


# --- results --------------------------------------------------------------------------------
def test_rows_hold_swept_values_states_and_returned_metrics(sweep: tuple[Path, str]) -> None:
    sweep_dir, _ = sweep
    table = results.load(sweep_dir)
    assert table.swept_keys == ["model", "lr", "seed"]
    assert table.columns == ["#", "model", "lr", "seed", "state", "duration", "host", "val.acc", "loss", "reason"]
    assert len(table) == 12
    for row, (model, lr, seed) in zip(table, expected_jobs()):
        assert row.params == {"model": model, "lr": lr, "seed": seed}  # values as Hydra types them
        assert row.host == "localhost" and row.duration_s is not None and row.duration_s >= 0
        if model == "broken":
            assert row.state == "failed" and row.reason == "ValueError: cannot train model=broken"
            assert row.values == {}
        else:
            acc, loss = scores(model, lr, seed)
            assert row.state == "completed" and row.values == {"val.acc": acc, "loss": loss}
    assert table.numeric_columns() == ["val.acc", "loss"]


def test_cli_sorts_filters_cuts_and_prints_every_format(sweep: tuple[Path, str]) -> None:
    sweep_dir, _ = sweep
    best = sorted((scores(m, lr, s)[0], m, lr, s) for m, lr, s in expected_jobs() if m != "broken")[::-1]

    table = cli("results", str(sweep_dir), "--sort=-val.acc", "--top", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["#", "model", "lr", "seed", "state", "duration", "host", "val.acc", "loss", "reason"]
    assert [float(line.split()[7]) for line in lines[2:]] == [b[0] for b in best[:3]]

    as_json = json.loads(
        cli("results", str(sweep_dir), "--where", "model=mlp", "--where", "lr>0.005", "--format", "json").stdout
    )
    assert [(r["model"], r["lr"], r["seed"]) for r in as_json] == [("mlp", 0.01, 0), ("mlp", 0.01, 1)]
    assert as_json[0]["val.acc"] == scores("mlp", 0.01, 0)[0] and as_json[0]["state"] == "completed"

    as_csv = list(csv.DictReader(io.StringIO(cli("results", str(sweep_dir), "--format", "csv").stdout)))
    failed = [r for r in as_csv if r["state"] == "failed"]
    assert len(as_csv) == 12 and len(failed) == 4
    assert {r["reason"] for r in failed} == {"ValueError: cannot train model=broken"}

    md = cli(
        "results", str(sweep_dir), "--columns", "#,model,val.*", "--where", "state=completed", "--format", "markdown"
    )
    md_lines = md.stdout.splitlines()
    assert md_lines[0] == "| # | model | val.acc |" and len(md_lines) == 2 + 8


def test_metrics_file_gives_columns_when_tasks_return_nothing_useful(sweep: tuple[Path, str]) -> None:
    sweep_dir, _ = sweep
    rows = json.loads(cli("results", str(sweep_dir), "--metrics", "metrics.json", "--format", "json").stdout)
    acc, loss = scores("cnn", 0.01, 1)
    job = next(r for r in rows if (r["model"], r["lr"], r["seed"]) == ("cnn", 0.01, 1))
    assert (job["epoch"], job["val_acc"], job["train.loss"]) == (3, acc, loss)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sort", "nope"], "no column 'nope' in this sweep"),
        (["--where", "lr"], "--where 'lr': write KEY=VALUE"),
        (["--columns", "model,zzz"], "no column 'zzz'"),
        (["--metrics", "/etc/passwd"], "give a path relative to each job's output dir"),
        (["--top", "-1"], "--top -1"),
    ],
)
def test_bad_input_is_one_line_naming_it(sweep: tuple[Path, str], args: list[str], message: str) -> None:
    proc = cli("results", str(sweep[0]), *args)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_to_pandas_is_a_frame_indexed_by_job_number(sweep: tuple[Path, str]) -> None:
    pytest.importorskip("pandas")  # an optional extra; the test extra installs it
    frame = results.load(sweep[0]).to_pandas()
    assert frame.shape == (12, 9) and list(frame.index) == list(range(12))
    assert frame.loc[frame["state"] == "completed", "val.acc"].max() == scores("cnn", 0.01, 1)[0]
    assert frame.groupby("model")["loss"].mean().round(6).to_dict()["mlp"] == pytest.approx(
        sum(scores("mlp", lr, s)[1] for lr in LRS for s in SEEDS) / 4
    )


def test_end_of_sweep_summary_shows_the_best_rows_and_the_full_table_command(sweep: tuple[Path, str]) -> None:
    sweep_dir, stderr = sweep
    assert "best 5 of 8 by val.acc (highest first)" in stderr
    assert f"full table: launcher-core results {sweep_dir}" in stderr
    best_block = stderr[stderr.index("best 5 of 8") :].split("full table")[0]
    assert "0.91" in best_block and "broken" not in best_block  # cnn lr=0.01 seed=1 is the best


def test_parse_override_types_values_as_hydra_does() -> None:
    """The fast path must agree with Hydra's own parser (which handles everything else)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    cases = ["lr=1e-3", "x=1", "x=-3", "x=+5", "m=cnn", "+a.b=2", "f=true", "n=null", "q='a b'", "l=[1,2]", "u=.5",
             "k=1.", "g=1.5e+3", "s=abc-def", "p=/a/b", "v=inf", "w=NaN", "t=True", "e=", "h=0x10", "z=1_000",
             "data.aug=strong", "++o=3", "key@pkg=x"]  # fmt: skip
    for text in cases:
        hydra_override = parser.parse_override(text)
        key, value = results.parse_override(text)
        want = hydra_override.value()
        assert key == hydra_override.key_or_group, text
        assert type(value) is type(want) and (value == want or (value != value and want != want)), text


# --- link -----------------------------------------------------------------------------------------
def test_link_names_job_dirs_by_config_and_never_clobbers(sweep: tuple[Path, str], tmp_path: Path) -> None:
    sweep_dir, _ = sweep
    dest = tmp_path / "tb"
    made = cli("link", str(sweep_dir), str(dest))
    assert made.returncode == 0, made.stderr
    assert "12 links created" in made.stdout
    link = dest / "model=cnn,lr=0.01,seed=1"
    assert link.is_symlink() and link.resolve() == (sweep_dir / "3").resolve()
    assert (link / "metrics.json").exists()
    assert len(list(dest.iterdir())) == 12

    again = cli("link", str(sweep_dir), str(dest))
    assert "0 links created, 0 replaced, 12 unchanged" in again.stdout

    by_model = cli("link", str(sweep_dir), str(tmp_path / "by-model"), "--by", "model")  # names collide
    assert by_model.returncode == 0, by_model.stderr
    assert sorted(p.name for p in (tmp_path / "by-model").iterdir())[:2] == ["model=broken,#10", "model=broken,#11"]

    (dest / "model=mlp,lr=0.01,seed=0").unlink()
    (dest / "model=mlp,lr=0.01,seed=0").mkdir()  # a user's own dir where a link would go
    (dest / "model=mlp,lr=0.01,seed=1").unlink()
    (dest / "model=mlp,lr=0.01,seed=1").symlink_to(tmp_path)  # a link that is not ours
    refused = cli("link", str(sweep_dir), str(dest))
    assert refused.returncode == 2 and "refusing to replace it" in refused.stderr, refused.stderr
    assert (dest / "model=mlp,lr=0.01,seed=0").is_dir() and not (dest / "model=mlp,lr=0.01,seed=0").is_symlink()
    assert (dest / "model=mlp,lr=0.01,seed=1").resolve() == tmp_path.resolve()

    unknown = cli("link", str(sweep_dir), str(dest), "--by", "model,depth")
    assert unknown.returncode == 2 and "--by depth: not a key of this sweep's overrides" in unknown.stderr


# --- files ----------------------------------------------------------------------------------------
def test_files_lists_matches_with_swept_values_and_copies_them(sweep: tuple[Path, str], tmp_path: Path) -> None:
    sweep_dir, _ = sweep
    listed = json.loads(cli("files", str(sweep_dir), "ckpt/*.pt", "--format", "json").stdout)
    assert len(listed) == 16  # two checkpoints of each of the 8 jobs that completed
    first = listed[0]
    assert (first["#"], first["model"], first["lr"], first["seed"], first["where"]) == (0, "cnn", 0.001, 0, "local")
    assert first["path"] == str(sweep_dir / "0" / "ckpt" / "epoch1.pt") and first["size"] == 100
    deep = json.loads(cli("files", str(sweep_dir), "**/last.pt", "--format", "json").stdout)
    assert len(deep) == 8 and {Path(r["path"]).name for r in deep} == {"last.pt"}

    dest = tmp_path / "ckpts"
    copied = cli("files", str(sweep_dir), "ckpt/last.pt", "--copy", str(dest))
    assert copied.returncode == 0, copied.stderr
    assert "copied 8 files of 8 jobs" in copied.stdout
    assert (dest / "model=mlp,lr=0.01,seed=1" / "ckpt" / "last.pt").read_bytes() == bytes([1]) * 1024
    none = cli("files", str(sweep_dir), "*.ckpt")
    assert none.returncode == 0 and "no file matches '*.ckpt' in 12 jobs" in none.stderr
    bad = cli("files", str(sweep_dir), "../x")
    assert bad.returncode == 2 and "give a glob relative to each job's dir" in bad.stderr


# --- report ---------------------------------------------------------------------------------------
def open_in_chromium(page_path: Path, screenshot: Path) -> dict:
    """Open the page in Debian's chromium (headless) and report what happened: console errors,
    uncaught exceptions, requests for anything but the file, plots drawn, the table's order
    after clicking a header."""
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]  # fmt: skip
    seen: dict = {"errors": [], "requests": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: seen["errors"].append(str(e)))
            page.on("request", lambda r: seen["requests"].append(r.url))
            page.goto(page_path.as_uri(), wait_until="load", timeout=60_000)
            page.wait_for_function("document.querySelectorAll('.plot .main-svg').length > 0", timeout=30_000)
            seen["plots"] = page.eval_on_selector_all(
                ".plot", "els => els.map(e => [e.id, !!e.querySelector('.main-svg')])"
            )
            seen["parcoords"] = page.locator("#parcoords .parcoords").count()
            seen["points"] = page.locator("#metric-1 .point").count()
            page.screenshot(path=str(screenshot), full_page=True)
            page.click("table#results th:nth-child(8)")  # val.acc, ascending
            page.click("table#results th:nth-child(8)")  # descending
            seen["first_row"] = page.inner_text("table#results tbody tr:first-child td:first-child")
        finally:
            browser.close()
    return seen


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (bash .ci/setup installs it)")
def test_report_renders_its_plots_offline_with_no_javascript_error(sweep: tuple[Path, str], tmp_path: Path) -> None:
    sweep_dir, _ = sweep
    out = tmp_path / "report.html"
    made = cli("report", str(sweep_dir), "-o", str(out))
    assert made.returncode == 0, made.stderr
    page = out.read_text()
    assert "cdn.plot.ly" not in page.split("<script>", 2)[-1]  # figures reference nothing outside
    assert "ValueError: cannot train model=broken" in page  # failed jobs with their reasons
    assert "Traceback" in page  # ... and the end of their log

    seen = open_in_chromium(out, tmp_path / "report.png")
    assert seen["errors"] == []
    assert seen["requests"] == [out.as_uri()]  # nothing fetched: works offline
    ids = dict(seen["plots"])
    assert ids == {"timeline": True, "durations": True, "metric-0": True, "metric-1": True, "metric-2": True,
                   "parcoords": True}  # fmt: skip
    assert seen["parcoords"] == 1  # three swept keys vary
    assert seen["points"] == 8  # val.acc against lr: one point per completed job
    assert seen["first_row"] == "3"  # sorted by val.acc, highest first: cnn lr=0.01 seed=1
    assert (tmp_path / "report.png").stat().st_size > 20_000


def test_report_metric_must_be_a_numeric_column(sweep: tuple[Path, str], tmp_path: Path) -> None:
    proc = cli("report", str(sweep[0]), "-o", str(tmp_path / "r.html"), "--metric", "model")
    assert proc.returncode == 2 and "--metric 'model' is not a numeric result column" in proc.stderr


def test_state_store_is_only_read(sweep: tuple[Path, str]) -> None:
    """The commands work from the store read-only: the jobs stay as the launch left them."""
    with StateStore.for_sweep_dir(sweep[0], readonly=True) as store:
        assert {r.state for r in store.jobs()} == {JobState.PULLED}


def test_best_rows_take_a_bare_returned_number_as_an_objective_to_minimise() -> None:
    """example_app returns its loss: the summary's best rows are the lowest (as Hydra's
    optimising sweepers take a bare return value), dict keys by their name."""
    from launcher_core.results import lower_is_better

    assert lower_is_better("return") and lower_is_better("val.loss") and lower_is_better("train_time")
    assert not lower_is_better("val.acc") and not lower_is_better("return.acc")
