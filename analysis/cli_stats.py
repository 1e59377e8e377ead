"""``pregate trace-stats``: does a trace have the structure speculation exploits?"""

HELP = "routing statistics: load skew, transitions, token overlap, LRU curve, accuracy of 'ahead'"
DESCRIPTION = """Per MoE layer: expert-use skew (max/mean share of routed tokens, normalised
entropy: 1.0 is perfectly even) and experts never used.

Per MoE layer and averaged over layers (works on imported traces too):
  trans in / cv / marg   L->L+1 top-1 transition accuracy: guessing layer l+1's
                         top-1 as the most frequent successor of layer l's, with
                         the table counted on the whole trace (in-sample), or on
                         the other half of the sequences (2-fold cross-validated,
                         seeded split by sequence), next to always guessing layer
                         l+1's most frequent top-1 (marginal);
  overlap                share of a token's experts the previous token of its
                         sequence chose at the same layer (independent uniform
                         routing gives top-k/experts);
  LRU @ C                hit rate of a plain per-layer LRU cache of C experts
                         over the requests in sequence order, the cache kept
                         across sequences ('LRU') or emptied at each sequence
                         ('LRU/seq'); C is 1/8, 1/4, 1/2 and 3/4 of a layer's experts.

Per lookahead distance
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the cross-validation split (default 0)")
    from pregate.traces.cliargs import add_json, add_quiet

    add_json(parser, "the statistics")
    add_quiet(parser)


def run(args) -> int:
    import json

    from pregate.analysis.routing import routing_stats
    from pregate.traces import open_trace

    from pregate.traces.cliargs import emit_json, json_to_stdout

    trace = open_trace(args.trace)
    stats = routing_stats(trace, seed=args.seed)
    emit_json(args, json.dumps(stats, indent=2))
    if json_to_stdout(args):
        return 0
    print(f"routing statistics of {args.trace} ({stats['model']})")
    print("\nexpert use per MoE layer (max/mean 1.0 and entropy 1.0 = perfectly even)")
    print(f"  {'stack':<8}{'layer':>6}{'routed':>9}{'max/mean':>10}{'entropy':>9}{'unused':>8}")
    for r in stats["usage"]:
        print(f"  {r['stack']:<8}{r['layer']:>6}{r['routed']:>9}{r['max_over_mean']:>10.2f}"
              f"{r['norm_entropy']:>9.3f}{r['unused']:>8}")
    for block in stats["tokens"]:
        _print_token_stats(block)
    if not stats["lookahead"]:
        if trace.meta.ahead_distance:
            layers = max(st.moe_layers for st in trace.meta.stacks.values())
            print(f"\nno lookahead accuracy: the trace has {layers} MoE layer(s) per stack, so no layer l+j "
                  "exists for 'ahead' to be checked against (it needs at least 2)")
        else:
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


def _print_token_stats(b: dict) -> None:
    sizes = b["lru_sizes"]
    print(f"\n{b['stack']}: {b['tokens']} tokens in {b['sequences']} sequences (mean {b['mean_seq_tokens']:.0f} "
          f"tokens), {b['experts']} experts, top-{b['top_k']}")
    head = f"  {'layer':>5}{'trans in':>9}{'cv':>7}{'marg':>7}{'overlap':>9}"
    head += "".join(f"{'LRU@' + str(c):>8}" for c in sizes) + "".join(f"{'/seq@' + str(c):>8}" for c in sizes)
    print(head)
    trans = {r["layer"]: r for r in b["transitions"]}
    overlap = {r["layer"]: r for r in b["overlap"]}
    lru = {r["layer"]: r for r in b["lru"]}
    lru_seq = {r["layer"]: r for r in b["lru_per_sequence"]}

    def cell(value, width=7, digits=3):
        # None or NaN: nothing to measure (a 1-layer trace has no layer-to-layer transition)
        return f"{'-':>{width}}" if value is None or value != value else f"{value:>{width}.{digits}f}"

    for layer in sorted(set(trans) | set(overlap) | set(lru)):
        t = trans.get(layer, {})
        line = f"  {layer:>5}{cell(t.get('in_sample'), 9)}{cell(t.get('cross_validated'))}{cell(t.get('marginal'))}"
        line += cell(overlap.get(layer, {}).get("overlap"), 9)
        line += "".join(cell(lru.get(layer, {}).get(f"hit_at_{c}"), 8) for c in sizes)
        line += "".join(cell(lru_seq.get(layer, {}).get(f"hit_at_{c}"), 8) for c in sizes)
        print(line)
    m = b["mean"]
    line = f"  {'mean':>5}{cell(m['transition_in_sample'], 9)}{cell(m['transition_cv'])}{cell(m['transition_marginal'])}"
    line += cell(m["overlap"], 9) + "".join(cell(m[f"lru_hit_at_{c}"], 8) for c in sizes)
    line += "".join(cell(m[f"lru_seq_hit_at_{c}"], 8) for c in sizes)
    print(line)
    print(f"  mean max/mean load {m['max_over_mean']:.2f}, entropy {m['norm_entropy']:.3f}; "
          f"overlap of independent uniform routing {m['overlap_uniform']:.3f}")
