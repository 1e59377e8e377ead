"""``pregate import``: routing logs of other tools (JSON Lines, dense CSV, Parquet) as a trace."""

HELP = "import routing logs of other tools (jsonl, csv-dense, parquet, SGLang routed experts) as a pregate trace"
DESCRIPTION = """Turn routing logs written by other tools (patched vLLM or SGLang, forward
hooks, published trace datasets) into a pregate trace that the simulator,
executor and analysis read like a recorded one.

formats:
  jsonl      one JSON object per (sequence, token, layer) with top-k expert ids and probabilities
  csv-dense  one row per token, one column per expert holding its router score
  parquet    Parquet/Arrow tables with list columns of expert ids and probabilities
  sglang-routed-experts
             JSON / JSON Lines of SGLang generate responses whose meta_info.routed_experts
             holds base64 int32 expert ids by token, layer and top-k slot (-1: no routed
             expert); the model's shape from --model or --model-config; prompt tokens
             become prefill, generated tokens decode steps

Fields default to the field of the same name (seq, pos, layer, experts, probs,
token, phase, stack, dropped). --layer and --experts take a field name or a
number: '--layer 3' puts every record in MoE layer 3, '--experts 64' says the
model has 64 experts. Without a layer field, the layer comes from the file name
(layer3.csv). Without a position field, tokens are numbered in record order.

The model shape (for costing transfers) comes from --model NAME, --model-config
FILE (TOML or JSON) and the shape flags, later ones overriding earlier ones;
what is missing is inferred from the data and reported. Data that contradicts
the shape is refused with the file and record. Imported traces have no 'ahead'
pre-gating column.

Exact duplicate records are dropped and counted; a key given twice with
different content fails (naming a field that tells the records apart, for a
composite --seq) unless --on-duplicate first|last. Sequences whose layers hold
different tokens fail unless --on-mismatch drop (drop them) or keep-aligned:
a layer that lost records is cut at its first gap (a gap in the positions,
else the first token id that disagrees with the other layers, else the whole
layer of that sequence), since tools renumber the records after a lost one;
then tokens missing from a layer are dropped, or kept as holes with
--on-missing hole. Phase: from --phase, else decode (encoder tokens:
prefill); decode tokens get steps 1.. in order.

examples:
  pregate import --format jsonl logs/*.jsonl -o runs/mixtral --model mixtral-8x7b \\
      --seq problem_id --pos token_idx --layer layer --experts experts --probs gating_probs
  pregate import --format csv-dense dumps/layer*.csv -o runs/olmoe --model olmoe-1b-7b --seq request
  pregate import --format parquet routing.parquet -o runs/mine --model-config my-moe.toml \\
      --on-mismatch keep-aligned --overwrite
  # a serving-engine patch's decode log: two fields form the key, records renumbered after a lost one
  pregate import --format jsonl mixtral_decode.jsonl -o runs/mixtral --model mixtral-8x7b \\
      --seq dataset,problem_id --pos token_idx --token token_id --on-mismatch keep-aligned --on-missing hole
  # dense per-layer CSV files Layer_2.csv..Layer_9.csv, 64-row blocks per sequence
  pregate import --format csv-dense flame/Layer_*.csv -o runs/flame --top-k 8 \\
      --layer-from-path 'Layer_(\\d+)' --layer-offset 2 --rows-per-seq 64
  # SGLang generate responses (server run with --enable-return-routed-experts)
  pregate import --format sglang-routed-experts responses.jsonl -o runs/dsv2 --model deepseek-v2-lite
  # a hook log in execution order (prefill runs, then one record per layer per decode step)
  pregate import --format jsonl hook.jsonl -o runs/hook --seq request --order execution"""


def add_arguments(parser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SRC", help="source files (a folder stands for its files)")
    parser.add_argument("-o", "--out", required=True, metavar="TRACE", help="trace folder to write")
    parser.add_argument("--format", required=True, choices=("jsonl", "csv-dense", "parquet", "sglang-routed-experts"),
                        help="source format")
    fields = parser.add_argument_group("fields of the source (default: the field of the same name, if present)")
    fields.add_argument("--seq", metavar="FIELD[,FIELD...]",
                        help="sequence (request) key; several fields form one key (--seq dataset,problem_id), kept as "
                        "a readable label 'gsm8k/0' in the metadata; without one, all records are one sequence")
    fields.add_argument("--pos", metavar="FIELD",
                        help="token position in its sequence (logs often call it token_idx); without one, record order")
    fields.add_argument("--layer", metavar="FIELD|N", help="MoE layer field, or a number: the layer of every record")
    fields.add_argument("--experts", metavar="FIELD|N", help="field of expert ids (jsonl, parquet), or a number: experts per layer")
    fields.add_argument("--probs", metavar="FIELD", help="field of gate probabilities (without one: 1/k each)")
    fields.add_argument("--token", metavar="FIELD", help="vocabulary id of the token (not its position: that is --pos); "
                        "without one the token column is null")
    fields.add_argument("--phase", metavar="FIELD", help="'prefill' or 'decode'; without one, decode (encoder: prefill)")
    fields.add_argument("--stack", metavar="FIELD", help="'encoder' or 'decoder'; without one, --default-stack")
    fields.add_argument("--dropped", metavar="FIELD", help="true where the token overflowed expert capacity")
    fields.add_argument("--layer-pattern", metavar="REGEX", default=None,
                        help="regex whose group 1 is the layer in a file name (default 'layer[_-]?(\\d+)')")
    fields.add_argument("--layer-from-path", metavar="REGEX", default=None,
                        help="regex searched in each file's whole path (folders too), group 1 the layer number, "
                        "e.g. 'Layer_(\\d+)'")
    fields.add_argument("--layer-offset", type=int, default=0, metavar="N",
                        help="MoE layer = the source's layer number - N (Layer_2..9 with N=2: layers 0..7; "
                        "the source numbers are kept as block indices)")
    fields.add_argument("--layer-map", metavar="SRC:DST,...",
                        help="explicit map from the source's layer numbers to MoE layers, e.g. 1:0,3:1,5:2")
    fields.add_argument("--rows-per-seq", type=int, metavar="N",
                        help="every N rows (per layer, in file order) are one sequence, positions 0..N-1")
    fields.add_argument("--order", choices=("record", "execution"), default="record",
                        help="'execution': records are in the order the model ran (a prefill run per layer, then "
                        "one record per layer per decode step); passes, phases and positions are inferred")
    fields.add_argument("--default-stack", choices=("decoder", "encoder"), default="decoder",
                        help="stack of records without a stack field (default: decoder)")
    dense = parser.add_argument_group("csv-dense")
    dense.add_argument("--expert-columns", metavar="REGEX",
                       help="regex matching a whole score column name, group 1 the expert id (default: e3, expert_3, 3)")
    dense.add_argument("--scores-are-probs", action="store_true",
                       help="the scores are probabilities already (default: router logits, softmaxed)")
    model = parser.add_argument_group("model shape (for costing transfers; missing values are inferred)")
    model.add_argument("--model", metavar="NAME", help="a known model: switch-base-8..256, switch-large-128, "
                       "mixtral-8x7b, olmoe-1b-7b, qwen1.5-moe-a2.7b, qwen3-30b-a3b, deepseek-v2-lite, "
                       "deepseek-v3, gpt-oss-20b")
    model.add_argument("--model-config", metavar="FILE", help="TOML or JSON with experts, moe_layers, top_k, d_model, "
                       "d_ff, dtype, gating, activation (and optionally stacks)")
    model.add_argument("--model-id", metavar="ID", help="name recorded in the trace metadata")
    model.add_argument("--num-experts", type=int, metavar="N", help="experts per MoE layer")
    model.add_argument("--moe-layers", type=int, metavar="N", help="MoE layers per stack")
    model.add_argument("--top-k", type=int, metavar="K", help="experts chosen per token")
    model.add_argument("--d-model", type=int, metavar="N", help="hidden size")
    model.add_argument("--d-ff", type=int, metavar="N", help="expert FFN size")
    model.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "int8", "int4"),
                       help="dtype the experts are stored in (for bytes per expert)")
    model.add_argument("--activation", metavar="NAME", help="expert activation, e.g. relu or silu-gated (gated: 3 matrices)")
    model.add_argument("--gating", metavar="NAME", help="e.g. top1-softmax, topk-softmax, topk-softmax-renorm")
    clean = parser.add_argument_group("messy logs")
    clean.add_argument("--on-duplicate", choices=("error", "first", "last"), default="error",
                       help="a key given twice with different content: fail (default) or keep the first/last")
    clean.add_argument("--on-mismatch", choices=("fail", "drop", "keep-aligned"), default="fail",
                       help="layers of a sequence hold different tokens: fail (default), drop the sequence, "
                       "or keep-aligned: cut each layer that lost records at its first gap (records after a lost one "
                       "may be renumbered), then keep the tokens present in every layer")
    clean.add_argument("--on-missing", choices=("drop", "hole"), default="drop",
                       help="a token missing from some layers (after keep-aligned's cut): drop it (default) or keep "
                       "it with a hole there (the simulator runs that layer step without the token)")
    out = parser.add_argument_group("output")
    out.add_argument("--prob-bits", type=int, default=10, metavar="B",
                     help="mantissa bits kept of each probability (23: exact float32; default 10)")
    out.add_argument("--part-rows", type=int, default=1_000_000, metavar="N", help="rows per part (default 1M)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing trace in TRACE")
    from pregate.traces.cliargs import add_quiet

    add_quiet(out)


def _number_or_field(value: str | None) -> tuple[int | None, str | None]:
    if value is None:
        return None, None
    text = value.strip()
    if text.isdigit():
        return int(text), None
    return None, value


def run(args) -> int:
    from pregate.traces.errors import TraceError
    from pregate.traces.importers import ColumnMap, ImportOptions, ModelShape, build_shape, import_trace
    from pregate.traces.importers.options import DEFAULT_LAYER_PATTERN, parse_layer_map

    layer_value, layer_field = _number_or_field(args.layer)
    experts_count, experts_field = _number_or_field(args.experts)
    if experts_count is not None and args.num_experts is not None and experts_count != args.num_experts:
        raise TraceError(f"--experts {experts_count} and --num-experts {args.num_experts} disagree")
    n_experts = args.num_experts if args.num_experts is not None else experts_count
    for flag, value in (("--num-experts", n_experts), ("--moe-layers", args.moe_layers), ("--top-k", args.top_k),
                        ("--d-model", args.d_model), ("--d-ff", args.d_ff)):
        if value is not None and value <= 0:
            raise TraceError(f"{flag} must be a positive integer, got {value}")
    flags = ModelShape(
        model_id=args.model_id,
        experts=n_experts,
        moe_layers=args.moe_layers,
        top_k=args.top_k,
        d_model=args.d_model,
        d_ff=args.d_ff,
        dtype=args.dtype,
        activation=args.activation,
        gating=args.gating,
    )
    shape = build_shape(args.model, args.model_config, flags)
    columns = ColumnMap(
        seq=args.seq, layer=layer_field, experts=experts_field, probs=args.probs, token=args.token,
        pos=args.pos, phase=args.phase, stack=args.stack, dropped=args.dropped,
    )
    opts = ImportOptions(
        format=args.format,
        columns=columns,
        layer_value=layer_value,
        layer_pattern=args.layer_pattern or DEFAULT_LAYER_PATTERN,
        default_stack=args.default_stack,
        on_duplicate=args.on_duplicate,
        on_mismatch=args.on_mismatch,
        on_missing=args.on_missing,
        layer_from_path=args.layer_from_path,
        layer_offset=args.layer_offset,
        layer_map=parse_layer_map(args.layer_map),
        rows_per_seq=args.rows_per_seq,
        order=args.order,
        scores_are_probs=args.scores_are_probs,
        expert_columns=args.expert_columns,
        prob_bits=args.prob_bits,
        part_rows=args.part_rows,
        overwrite=args.overwrite,
    )
    report = import_trace(args.sources, args.out, opts, shape)
    print("\n".join(report.lines()))
    return 0
