"""``pregate report``: plots and tables of sweep results, as one HTML page and a Markdown summary."""

HELP = "turn sweep results into a self-contained HTML report and a Markdown summary"
DESCRIPTION = """Read the results folder of 'pregate sweep' and write, into DIR:
  report.html   one page with every table and plot; images embedded (opens offline)
  report.md     the same tables, linking figures/*.png
  figures/      the plots as PNG files

Plots: latency against GPU memory (the Pareto front per policy), the latency
breakdown (compute, stall, dispatch), and for each trace still readable:
expert usage, layer-to-layer transitions, accuracy of the pre-gating signal by
lookahead distance, LRU hit rate by cache size and per layer. With
--measured, simulated against measured latency.

Every table and plot says whose routing it is and whose sizes price it
("routing of X, priced as Y"); --price-as MODEL (or --model-config FILE)
keeps only the points priced as that model. Points whose dense weights +
expert cache + working margin exceed the GPU's memory are marked OVER MEMORY
everywhere and never called best unless --include-over-memory. A plot whose
points all lie within 1% of each other is replaced by a sentence saying so.

examples:
  pregate report res -o report
  pregate report res -o report --trace runs/sb8
  pregate sweep --trace T --uncertainty corners -o res && pregate report res -o report --uncertainty
  pregate report res -o report --measured validation.parquet   # columns measured_s, simulated_s[, label]
  pregate report res -o report --price-as mixtral-8x7b         # only the points priced as mixtral-8x7b"""


def add_arguments(parser) -> None:
    parser.add_argument("results", help="results folder written by 'pregate sweep'")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--trace", action="append", metavar="TRACE",
                        help="analyse this trace's routing instead of the results' own traces (repeatable)")
    parser.add_argument("--measured", metavar="FILE.parquet",
                        help="measured vs simulated step latencies (columns measured_s, simulated_s, optional label)")
    parser.add_argument("--title", default="pregate sweep report", help="page title")
    from pregate.simulator.pricing import MODEL_CONFIG_HELP

    parser.add_argument("--price-as", metavar="MODEL", help="report only the points priced as this model")
    parser.add_argument("--model-config", metavar="FILE", help="report only the points priced by this config file ("
                        + MODEL_CONFIG_HELP.split("(", 1)[0].strip() + ")")
    parser.add_argument("--include-over-memory", action="store_true",
                        help="let points that do not fit the GPU's memory be ranked best")
    parser.add_argument("--uncertainty", action="store_true",
                        help="require the bands of 'pregate sweep --uncertainty' (drawn whenever the results have them)")
    from pregate.traces.cliargs import add_quiet

    add_quiet(parser)


def run(args) -> int:
    from pathlib import Path

    from pregate.analysis.report import write_report
    from pregate.simulator.sweep import SweepError

    for flag, value in (("results", args.results), ("-o", args.out)):
        path = Path(value)
        if flag == "results" and not path.exists():
            raise SweepError(f"results folder not found: {path} (write one with 'pregate sweep ... -o {path}')")
        bad = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
        if bad is not None:
            inside = "" if bad == path else f" (inside {bad}, which is a file)"
            raise SweepError(f"{flag} {value} is not a folder{inside}: give "
                             + ("the folder 'pregate sweep -o' wrote" if flag == "results" else "a new or existing folder"))
    measured = None
    if args.measured:
        import polars as pl

        path = Path(args.measured)
        if not path.is_file():
            raise SweepError(f"measurements not found: {path}")
        measured = pl.read_parquet(path)
        missing = [c for c in ("measured_s", "simulated_s") if c not in measured.columns]
        if missing:
            raise SweepError(f"{path}: missing column(s) {', '.join(missing)}")
    from pregate.simulator.pricing import spec_from_flags
    from pregate.simulator.sweep import read_results

    frame = read_results(args.results)
    spec = spec_from_flags(args.price_as, args.model_config)
    if spec:
        frame = select_priced(frame, spec, args.results)
    files = write_report(frame, args.out, traces=args.trace, measured=measured, title=args.title,
                         include_over_memory=args.include_over_memory,
                         uncertainty=args.uncertainty)
    print(f"wrote {files.html} ({len(files.figures)} plots embedded), {files.markdown} and {Path(args.out) / 'figures'}/")
    return 0


def select_priced(frame, spec: str, where):
    """The points of ``frame`` priced as ``spec`` (a known model or a config file), or one clear error."""
    import polars as pl

    from pregate.simulator.pricing import resolve_target
    from pregate.simulator.sweep import SweepError

    name = resolve_target(spec).name
    have = frame["priced_as"] if "priced_as" in frame.columns else frame["trace_model"]
    keep = frame.filter(have == name) if "priced_as" in frame.columns else frame.filter(pl.lit(False))
    if keep.is_empty():
        raise SweepError(f"{where}: no points priced as {name} (they are priced as: "
                         f"{', '.join(sorted(set(have.drop_nulls().to_list())))}); sweep with --price-as {spec}")
    return keep
