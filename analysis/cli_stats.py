"""``pregate trace-stats``: does a trace have the structure speculation exploits?"""

HELP = "routing statistics: expert-use skew per layer and accuracy of 'ahead' against baselines"
DESCRIPTION = """Per MoE layer: expert-use skew (max/mean share of routed tokens, normalised
entropy: 1.0 is perfectly even) and experts never used. Per lookahead distance
j: how often 'ahead' (layer l's hidden state through layer l+j's router) names
the expert layer l+j really chose (top-1 accuracy), recall when the top n are
prefetched, and the same for two baselines that need no hidden state: chance
and always guessing that layer's most frequent expert.

examples:
  pregate trace-stats traces/samples/pregate-moe-tiny
  pregate trace-stats runs/sb8 --json
  pregate trace-stats runs/sb8 --json stats.json"""


def add_arguments(parser) -> None:
    parser.add_argument("trace", help="trace folder")
    from pregate.cliargs import add_json, add_quiet

    add_json(parser, "the statistics")
    add_quiet(parser)


def run(args) -> int:
    import json

    from pregate.analysis.routing import routing_stats
    from pregate.traces import open_trace

    from pregate.cliargs import emit_json, json_to_stdout

    stats = routing_stats(open_trace(args.trace))
    emit_json(args, json.dumps(stats, indent=2))
    if json_to_stdout(args):
        return 0
    print(f"routing statistics of {args.trace} ({stats['model']})")
    print("\nexpert use per MoE layer (max/mean 1.0 and entropy 1.0 = perfectly even)")
    print(f"  {'stack':<8}{'layer':>6}{'routed':>9}{'max/mean':>10}{'entropy':>9}{'unused':>8}")
    for r in stats["usage"]:
        print(f"  {r['stack']:<8}{r['layer']:>6}{r['routed']:>9}{r['max_over_mean']:>10.2f}"
              f"{r['norm_entropy']:>9.3f}{r['unused']:>8}")
    if not stats["lookahead"]:
        print("\nno 'ahead' column in this trace: lookahead accuracy needs a trace recorded by 'pregate trace'")
        return 0
    recall_key = next(k for k in stats["lookahead"][0] if k.startswith("recall_at_"))
    n = recall_key.rsplit("_", 1)[1]
    print(f"\nlookahead: does 'ahead' at distance j name the expert layer l+j chose?")
    print(f"  {'j':>2}{'rows':>9}{'top-1':>8}{'chance':>8}{'frequent':>10}{'ratio':>7}   "
          f"{'recall@' + n:>9}{'chance':>8}{'frequent':>10}")
    for r in stats["lookahead"]:
        print(f"  {r['distance']:>2}{r['rows']:>9}{r['top1_accuracy']:>8.3f}{r['chance_top1']:>8.3f}"
              f"{r['most_frequent_top1']:>10.3f}{r['ratio_to_best_baseline']:>6.2f}x   {r[recall_key]:>9.3f}"
              f"{r['chance_' + recall_key]:>8.3f}{r['most_frequent_' + recall_key]:>10.3f}")
    print("  ratio = top-1 accuracy / the better of the two top-1 baselines")
    return 0
