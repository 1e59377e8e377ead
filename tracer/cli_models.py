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
    from pregate.traces.cliargs import add_json, add_quiet

    add_json(parser, "the list")
    add_quiet(parser)


def run(args) -> int:
    import json

    from pregate.tracer.models import known_variants

    rows = []
    for cls, v in known_variants():
        shape = cls.summarize(cls.build_config(dict(v.config)))
        rows.append(dict(family=cls.family, name=v.name, experts=shape["experts"], top_k=shape["top_k"],
                         moe_layers=shape["moe_layers"], d_model=shape["d_model"], d_ff=shape["d_ff"],
                         expert_mb_bf16=round(shape["expert_params"] * 2 / 1e6, 2), params=v.params))
    from pregate.traces.cliargs import emit_json, json_to_stdout

    emit_json(args, json.dumps(rows, indent=2))
    if json_to_stdout(args):
        return 0
    print(f"{'family':<13}{'name':<30}{'experts':>8}{'top-k':>6}{'MoE layers':>11}{'MB/expert':>10}{'params':>9}")
    for r in rows:
        params = f"{r['params'] / 1e9:.2f}B" if r["params"] else "-"
        print(f"{r['family']:<13}{r['name']:<30}{r['experts']:>8}{r['top_k']:>6}{r['moe_layers']:>11}"
              f"{r['expert_mb_bf16']:>10}{params:>9}")
    return 0
