"""``pregate models``: the model shapes pregate knows."""

HELP = "list the MoE model shapes that --random-init can build, by family"
DESCRIPTION = """List every known model shape (family, name, experts, top-k, MoE layers,
bytes per expert in bfloat16, published parameter count). Any of these names
works with 'pregate trace --random-init'; a real checkpoint of a listed family
loads from a local folder or the local Hugging Face cache.

examples:
  pregate models
  pregate models --json | python -m json.tool
  pregate models --json shapes.json"""


def add_arguments(parser) -> None:
    from pregate.cliargs import add_json, add_quiet

    add_json(parser, "the list")
    add_quiet(parser)


def run(args) -> int:
    import json

    from pregate.tracer.models import known_variants

    rows = []
    for cls, v in known_variants():
        c = cls.build_config(dict(v.config))
        experts = getattr(c, "num_experts", None) or getattr(c, "num_local_experts", None)
        if cls.encoder_decoder:
            moe_layers = f"{c.num_sparse_encoder_layers}+{c.num_sparse_decoder_layers}"
            top_k, d_ff, d_model, expert_params = 1, c.d_ff, c.d_model, 2 * c.d_model * c.d_ff
        else:
            step = getattr(c, "decoder_sparse_step", 1) or 1
            moe_layers = str(len([i for i in range(c.num_hidden_layers) if (i + 1) % step == 0]))
            top_k, d_model = c.num_experts_per_tok, c.hidden_size
            d_ff = getattr(c, cls.expert_ff_attr)
            expert_params = 3 * d_model * d_ff
        rows.append(dict(family=cls.family, name=v.name, experts=experts, top_k=top_k, moe_layers=moe_layers,
                         d_model=d_model, d_ff=d_ff, expert_mb_bf16=round(expert_params * 2 / 1e6, 2),
                         params=v.params))
    from pregate.cliargs import emit_json, json_to_stdout

    emit_json(args, json.dumps(rows, indent=2))
    if json_to_stdout(args):
        return 0
    print(f"{'family':<11}{'name':<30}{'experts':>8}{'top-k':>6}{'MoE layers':>11}{'MB/expert':>10}{'params':>9}")
    for r in rows:
        params = f"{r['params'] / 1e9:.2f}B" if r["params"] else "-"
        print(f"{r['family']:<11}{r['name']:<30}{r['experts']:>8}{r['top_k']:>6}{r['moe_layers']:>11}"
              f"{r['expert_mb_bf16']:>10}{params:>9}")
    return 0
