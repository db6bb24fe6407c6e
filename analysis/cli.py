"""``aladdin analyze``: SLO attainment, goodput and latency statistics of one or more runs.

Only click is imported at module level; numpy, pandas and matplotlib load when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from aladdin.clicommand import command


@command("analyze")
@click.argument("runs", nargs=-1, required=True, metavar="RUN_DIR [RUN_DIR ...]",
                type=click.Path(path_type=Path))
@click.option("--ttft-slo", type=float, required=True, help="TTFT SLO in seconds.")
@click.option("--atgt-slo", type=float, required=True, help="ATGT (average token generation time) SLO in seconds.")
@click.option("--tbt-slo", type=float, default=None,
              help="Optional TBT SLO in seconds: a request meets it when 99% of its token gaps are within it.")
@click.option("--warmup", type=float, default=0.0, show_default=True,
              help="Seconds after the first scheduled arrival left out of the steady-state window.")
@click.option("--cooldown", type=float, default=0.0, show_default=True,
              help="Seconds before the last scheduled arrival left out of the steady-state window.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the summary JSON here.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Write per-request metrics here.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML report here.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), help="Write PNG plots into this folder.")
@click.option("--sweep-atgt", metavar="A:B:N", help="Joint attainment at N ATGT SLOs from A to B seconds.")
@click.option("--sweep-ttft", metavar="A:B:N", help="Joint attainment at N TTFT SLOs from A to B seconds.")
def analyze(runs, ttft_slo, atgt_slo, tbt_slo, warmup, cooldown, json_path, csv_path, report_path, plots_dir,
            sweep_atgt, sweep_ttft) -> None:
    """Analyse run folders (requests.jsonl + run.json) or vLLM 'bench serve' result JSON files.

    Prints one comparison row per run; times are seconds on the command line and in JSON.
    """
    from aladdin.analysis.load import load_runs
    from aladdin.analysis.metrics import SLO, Window, analyze_run, parse_sweep
    from aladdin.analysis.report import format_table, json_document
    from aladdin.errors import AladdinError

    slo = SLO(ttft=ttft_slo, atgt=atgt_slo, tbt=tbt_slo)
    window = Window(warmup=warmup, cooldown=cooldown)
    sweeps = {}
    if sweep_atgt:
        sweeps["atgt"] = parse_sweep(sweep_atgt, "--sweep-atgt")
    if sweep_ttft:
        sweeps["ttft"] = parse_sweep(sweep_ttft, "--sweep-ttft")

    analyses = [analyze_run(run, slo, window, sweeps) for run in load_runs(runs)]
    document = json_document(analyses, slo, window)
    try:
        written = _write_outputs(analyses, document, slo, json_path, csv_path, report_path, plots_dir)
    except OSError as exc:
        raise AladdinError(f"cannot write {exc.filename or 'output'}: {exc.strerror or exc}") from None
    for path in written:
        click.echo(f"wrote {path}", err=True)
    click.echo(format_table(document))  # last, so a terminal ends with the table


def _write_outputs(analyses, document, slo, json_path, csv_path, report_path, plots_dir) -> list[Path]:
    from aladdin.analysis.report import write_csv, write_html, write_json

    for path in (json_path, csv_path, report_path):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if json_path:
        write_json(json_path, document)
        written.append(json_path)
    if csv_path:
        write_csv(csv_path, analyses)
        written.append(csv_path)
    if plots_dir or report_path:
        from aladdin.analysis.plots import render_plots, write_plots

        images = render_plots(analyses, slo)
        if plots_dir:
            written += write_plots(plots_dir, images)
        if report_path:
            write_html(report_path, document, images)
            written.append(report_path)
    return written
