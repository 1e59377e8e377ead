"""How close to Belady can an online eviction policy get on the Mixtral-like trace (25% cache, batch 1)?

Why this exists: ``bench_policies.py`` asks for an online pair within 1.30x of
the perfect-prediction reference (oracle + Belady) there, and every recency
policy ties LRU at ~1.5x. At batch 1 on the rtx3090 profile a copy takes
~14 ms against microseconds of compute, so the step time follows the number
of fetches and the question is one of eviction. This script measures what
an online policy could do at best on this generator, three ways:

* **where Belady's advantage comes from**: its per-layer occupancy (LRU holds
  exactly the last token's two experts per layer; Belady moves slots between
  layers) and how many of its victims are the experts the layer just used;
* **informed online policies**: eviction that is told the generator's true
  conditional probabilities (its popularity, transition and persistence
  parameters and each sequence's style, all replayed from the seed; never the
  routing still to come). Per layer step, Monte Carlo rollouts of the rest of
  the token and the next token give each expert's chance ``p`` of being used at
  its layer's next visit and ``d``, the layer steps until that visit. Rules:
  evict the least ``p``; the least hit density ``p / d`` (LHD's rule: hits per
  slot-step, which is Belady's rule when ``p`` is 0 or 1); the largest expected
  next use ``d + L (1 - p) / p``; each with and without admission control (a
  demand miss whose score is below the victim's is streamed through the
  staging buffer, not cached). No online policy can know more than these.
* **a bound for every online policy** (no prefetch copy gives a free hit, so
  it covers speculation too): a hit that costs no copy is on an expert that
  stayed in the cache since its previous use, through every visit of its layer
  in between; each visit ``v`` it stays through costs a slot for one token
  (``L`` layer steps, batch 1) and earns at most ``p_v`` (the true probability
  that it is chosen at ``v`` given everything before ``v``'s router, the
  sequence's style included): the expected hits of a policy equal the sum of
  ``p_v`` over the visits at which it holds the expert, because what it holds
  at ``v`` is decided before ``v`` routes. With ``C`` slots a run of ``V``
  tokens has ``C * V`` slot-tokens. Holding an expert from a use through
  ``k`` further visits is a prefix of that gap's visits; the fractional
  knapsack over the concave envelopes of every gap's prefix gains is at least
  the best such schedule on this path (a relaxation: it sees which visits are
  uses, which no online policy does), so ``requests - bound`` is a lower
  bound on the expected fetches of any online policy, estimated on this path
  with Monte Carlo probabilities;
* **a priced estimate** (Lagrangian relaxation of the slot limit): with each
  slot-token priced at ``lam``, every expert is held on its own by the best
  rule at that price, deciding at each of its uses whether to keep it for
  the next visit of its layer; the decision is credited with the sharpest
  information an online policy could have (``p_v`` given the top-1 of the
  layer before, weighted by its distribution given what is known at the
  use) and the value of holding on after an unused visit is its average over
  the path's unused states (the one step that makes this an estimate rather
  than a bound). ``min over lam`` of ``lam * C * V`` plus the sum is the
  estimate; it does not see which visits are uses, so it is much tighter
  than the bound above.

The replay here is the cache mechanism in miniature (a layer step's experts
are protected; a miss evicts the policy's victim, or bypasses when it names
none); its LRU and Belady miss counts are checked against the simulator's.
Fetches become milliseconds by the line through the simulated none + lru
and none + belady points (derived: at batch 1 the step time is nearly
proportional to fetches).

    python bench/bench_online_ceiling.py [--samples 256] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEQS, TOKENS, SEED, AHEAD_ACCURACY = 16, 8, 0, 0.8  # the like trace of bench_policies.py


# ---- the trace and the generator's parameters ---------------------------------------------------

def mixtral_like(folder: Path, seqs: int, tokens: int):
    """The routing cube (seqs, tokens, layers, k) of bench_policies' mixtral-like trace, and its path."""
    from pregate.simulator import synthetic as syn
    from pregate.traces import open_trace

    path = syn.like_trace(folder, "mixtral-8x7b", seqs=seqs, decode_tokens=tokens, seed=SEED,
                          ahead_accuracy=AHEAD_ACCURACY)
    frame = open_trace(path).collect().sort(["seq", "step", "layer"])
    layers = int(frame["layer"].max()) + 1
    cube = np.stack(frame["experts"].to_numpy()).astype(np.int64).reshape(seqs, tokens, layers, -1)
    return cube, path


class GeneratorModel:
    """The generator's routing parameters, replayed from its seed, and its conditional choice probabilities.

    ``synthetic.route`` draws popularity, preferences, lead offsets, style terms
    and each sequence's style, in that order, before any routing; the same
    draws are repeated here, and ``synthetic.route`` itself is rerun to check
    that the seed and order give exactly the trace's routing."""

    def __init__(self, cube: np.ndarray, like: str = "mixtral-8x7b", seed: int = SEED):
        from pregate.simulator import synthetic as syn

        p = syn.preset(like)
        k = p.knobs
        seqs, tokens, layers, top_k = cube.shape
        rerun, _ = syn.route(np.random.default_rng(seed), [tokens] * seqs, layers, p.experts, top_k, k)
        if not np.array_equal(rerun.reshape(cube.shape), cube):
            raise SystemExit("synthetic.route no longer reproduces the like trace from its seed; update this script")
        rng = np.random.default_rng(seed)
        self.knobs, self.layers, self.experts = k, layers, p.experts
        self.logp = syn._popularity(rng, layers, p.experts, k, False)
        self.pref = k.transition * syn._balanced_preferences(rng, layers, p.experts)
        self.lead = (k.lead_skew * syn._normal_profile(rng, p.experts, layers)).astype(np.float32)
        self.n_styles = max(1, k.styles)
        shape = (self.n_styles, layers, p.experts)
        self.style_pop = np.zeros(shape, np.float32)
        self.style_pref = np.zeros(shape + (p.experts,), np.float32)
        if k.styles:
            self.style_pop += (k.style_skew * rng.standard_normal(self.style_pop.shape)).astype(np.float32)
            self.style_pref += (k.style_transition * rng.standard_normal(self.style_pref.shape)).astype(np.float32)
        self.seq_style = rng.integers(0, self.n_styles, size=seqs)

    def draw(self, rng, layer: int, style: np.ndarray, above, prev_set: np.ndarray | None):
        """n draws of layer ``layer``'s top-2 as (n, E) 0/1 and their top-1, given per-draw style, the
        top-1 of the layer before (None at layer 0) and the previous token's set at this layer (None:
        the first token of a sequence)."""
        n, e = len(style), self.experts
        logits = self.logp[layer] + self.style_pop[style, layer]
        if layer and above is not None:
            logits = logits + self.pref[layer][above] + self.style_pref[style, layer, above]
        if prev_set is not None:
            logits = logits + self.knobs.persistence * prev_set
        noisy = logits + -np.log(rng.standard_exponential((n, e)).astype(np.float32) + np.float32(1e-30))
        rows = np.arange(n)
        first = (noisy + self.lead[layer]).argmax(1)
        noisy[rows, first] = -np.inf
        second = noisy.argmax(1)
        out = np.zeros((n, e), np.float32)
        out[rows, first] = 1.0
        out[rows, second] = 1.0
        return out, first


# ---- the mechanism in miniature -----------------------------------------------------------------

def steps_of(cube: np.ndarray):
    """Layer steps in stream order (batch 1): (seq, token, layer, objects)."""
    seqs, tokens, layers, _ = cube.shape
    e = int(cube.max()) + 1
    return [(s, t, m, [m * e + int(x) for x in cube[s, t, m]])
            for s in range(seqs) for t in range(tokens) for m in range(layers)]


def replay(steps, capacity: int, policy):
    """(misses, bypasses, mean occupancy per layer, victims that the layer step before had used)."""
    n_layers = max(m for _, _, m, _ in steps) + 1
    width = max(o for *_, objs in steps for o in objs) // n_layers + 1
    nxt, last = {}, {}
    for i in range(len(steps) - 1, -1, -1):
        for o in steps[i][3]:
            nxt[(i, o)] = last.get(o, 1 << 40)
            last[o] = i
    cache: dict[int, int] = {}  # object -> index of its next request
    misses = bypasses = just_used = 0
    occupancy = np.zeros(n_layers)
    previous: list[int] = []
    for i, (s, t, m, objs) in enumerate(steps):
        policy.begin(i, s, t, m, objs)
        protected = set(objs)
        for o in objs:
            if o in cache:
                cache[o] = nxt[(i, o)]
                policy.touch(o)
                continue
            misses += 1
            if len(cache) >= capacity:
                victim = policy.victim(cache, protected, o)
                if victim is None:
                    bypasses += 1
                    continue
                just_used += victim in previous
                del cache[victim]
            cache[o] = nxt[(i, o)]
            policy.touch(o)
        for o in cache:
            occupancy[o // width] += 1
        previous = objs
    return misses, bypasses, occupancy / len(steps), just_used


class LRU:
    def __init__(self):
        self.tick, self.last = 0, {}

    def begin(self, *args):
        pass

    def touch(self, o):
        self.tick += 1
        self.last[o] = self.tick

    def victim(self, cache, protected, incoming):
        free = [o for o in cache if o not in protected]
        return min(free, key=self.last.__getitem__) if free else None


class Belady(LRU):
    def victim(self, cache, protected, incoming):
        free = [o for o in cache if o not in protected]
        return max(free, key=cache.__getitem__) if free else None


class Informed:
    """Eviction told the generator's true conditional probabilities (see the module docstring)."""

    def __init__(self, model: GeneratorModel, cube: np.ndarray, rule: str, admit: bool, samples: int, seed: int = 1):
        self.model, self.cube, self.rule, self.admit, self.n = model, cube, rule, admit, samples
        self.rng = np.random.default_rng(seed)

    def touch(self, o):
        pass

    def begin(self, i, s, t, layer, objs):
        """Roll the rest of this token and the next token's layers up to this one forward."""
        g, cube, n = self.model, self.cube, self.n
        n_layers, e = g.layers, g.experts
        self.p = np.zeros((n_layers, e))
        self.d = np.zeros((n_layers, e))
        style = np.full(n, g.seq_style[s])
        above = np.full(n, cube[s, t, layer, 0])
        for m in range(layer + 1, n_layers):
            prev = None
            if t:
                prev = np.zeros((n, e), np.float32)
                prev[:, cube[s, t - 1, m]] = 1.0
            drawn, above = g.draw(self.rng, m, style, above, prev)
            self.p[m], self.d[m] = drawn.mean(0), m - layer
        new_seq = t + 1 >= cube.shape[1]
        style2 = self.rng.integers(0, g.n_styles, n) if new_seq else style
        above = None
        for m in range(layer + 1):
            prev = None
            if not new_seq:
                prev = np.zeros((n, e), np.float32)
                prev[:, cube[s, t, m]] = 1.0
            drawn, above = g.draw(self.rng, m, style2, above, prev)
            self.p[m], self.d[m] = drawn.mean(0), m - layer + n_layers
        self.width = e

    def score(self, o):
        m, x = divmod(o, self.width)
        p, d = max(self.p[m, x], 1e-4), self.d[m, x]
        if self.rule == "p":
            return p
        if self.rule == "p/d":
            return p / d
        return -(d + self.model.layers * (1.0 - p) / p)  # expected next use, negated

    def victim(self, cache, protected, incoming):
        free = [o for o in cache if o not in protected]
        if not free:
            return None
        victim = min(free, key=lambda o: (self.score(o), o))
        if self.admit and self.score(incoming) < self.score(victim):
            return None
        return victim


# ---- the bound ----------------------------------------------------------------------------------

def true_probabilities(model: GeneratorModel, cube: np.ndarray, samples: int, seed: int = 7) -> np.ndarray:
    """(seqs, tokens, layers, E): P(chosen | everything before the router of that visit), by Monte Carlo."""
    rng = np.random.default_rng(seed)
    seqs, tokens, layers, _ = cube.shape
    e = model.experts
    out = np.zeros((seqs, tokens, layers, e))
    for s in range(seqs):
        style = np.full(samples, model.seq_style[s])
        for t in range(tokens):
            for m in range(layers):
                above = np.full(samples, cube[s, t, m - 1, 0]) if m else None
                prev = None
                if t:
                    prev = np.zeros((samples, e), np.float32)
                    prev[:, cube[s, t - 1, m]] = 1.0
                out[s, t, m] = model.draw(rng, m, style, above, prev)[0].mean(0)
    return out


def online_bound(cube: np.ndarray, p: np.ndarray, capacity: int) -> float:
    """Most expected copy-free hits of any online policy (module docstring): fractional knapsack of
    slot-tokens over the concave envelopes of each gap's prefix gains."""
    seqs, tokens, layers, _ = cube.shape
    v = seqs * tokens
    flat, prob = cube.reshape(v, layers, -1), p.reshape(v, layers, -1)
    segments = []
    for m in range(layers):
        for x in range(prob.shape[2]):
            uses = np.flatnonzero((flat[:, m] == x).any(axis=1))
            for a, b in zip(uses[:-1], uses[1:]):
                gains = np.concatenate([[0.0], np.cumsum(prob[a + 1:b + 1, m, x])])
                hull = [0]
                for k in range(1, len(gains)):
                    while len(hull) >= 2:
                        k0, k1 = hull[-2], hull[-1]
                        if (gains[k1] - gains[k0]) * (k - k1) <= (gains[k] - gains[k1]) * (k1 - k0):
                            hull.pop()
                        else:
                            break
                    hull.append(k)
                for k0, k1 in zip(hull[:-1], hull[1:]):
                    segments.append(((gains[k1] - gains[k0]) / (k1 - k0), k1 - k0))
    segments.sort(key=lambda seg: -seg[0])
    budget, total = float(capacity * v), 0.0
    for slope, cost in segments:
        take = min(cost, budget)
        total += slope * take
        budget -= take
        if budget <= 0:
            break
    return total


def lagrangian_bound(model: GeneratorModel, cube: np.ndarray, capacity: int, samples: int, seed: int = 11):
    """Expected copy-free hits of the best online policy, estimated by pricing slot-tokens at ``lam``
    (module docstring): ``min over lam`` of ``lam * C * V`` plus, for every use, the value of the
    best per-expert holding rule at that price. Returns (hits, lam)."""
    rng = np.random.default_rng(seed)
    seqs, tokens, layers, _ = cube.shape
    e = model.experts
    v_total = seqs * tokens
    flat = cube.reshape(v_total, layers, -1)
    style_of = np.repeat(model.seq_style, tokens)
    first_of = np.tile(np.arange(tokens) == 0, seqs)
    used_rows, other_rows = [], []  # per (visit, expert): (weights over above, p given each above)
    for k in range(v_total - 1):
        nk = k + 1
        style = np.full(samples, style_of[nk])
        new_seq = first_of[nk]
        above_w = np.zeros(e)
        above = None
        for m in range(layers):
            prev = None
            if not new_seq:
                prev = np.zeros((samples, e), np.float32)
                prev[:, flat[k, m]] = 1.0
            # p(x chosen at (k+1, m) | the top-1 of layer m-1 at k+1): one block of draws per value
            if m == 0:  # no transition into layer 0: one distribution, padded to the others' shape
                weights = np.eye(e)[0]
                given = np.repeat(model.draw(rng, 0, style, None, prev)[0].mean(0)[None, :], e, axis=0)
            else:
                weights = above_w
                per = max(64, samples // e)
                a = np.repeat(np.arange(e), per)
                prev_a = None if prev is None else np.repeat(prev[:1], len(a), axis=0)
                drawn, _ = model.draw(rng, m, np.full(len(a), style_of[nk]), a, prev_a)
                given = drawn.reshape(e, per, e).mean(1)
            for x in range(e):
                row = (weights, given[:, x])
                (used_rows if x in flat[k, m] else other_rows).append(row)
            # the rollout of token k+1 up to layer m, for the next layer's above
            drawn, above = model.draw(rng, m, style, above, prev)
            above_w = np.bincount(above, minlength=e) / samples
    w_used = np.array([r[0] for r in used_rows])
    p_used = np.array([r[1] for r in used_rows])
    w_other = np.array([r[0] for r in other_rows])
    p_other = np.array([r[1] for r in other_rows])
    budget = capacity * v_total

    def gain(weights, p, lam, cont):
        return (weights * np.maximum(0.0, p - lam + (1.0 - p) * cont)).sum(axis=1)

    best = None
    for lam in np.linspace(0.02, 0.6, 59):
        cont = 0.0  # value of holding on after an unused visit: a fixed point over the unused states
        for _ in range(60):
            g = gain(w_other, p_other, lam, cont)
            cont = float(g.mean()) if len(g) else 0.0
        total = lam * budget + float(gain(w_used, p_used, lam, cont).sum())
        if best is None or total < best[0]:
            best = (total, float(lam))
    return best


# ---- the simulator's figures --------------------------------------------------------------------

def simulated(path, capacity_text: str):
    """(misses, ms/step) of none+lru and none+belady, and the reference's ms/step, from the simulator."""
    from pregate.simulator import Settings, Simulation
    from pregate.simulator.stream import build_stream
    from pregate.traces import open_trace

    stream = build_stream(open_trace(path), batch_size=1)
    sim = Simulation(None, Settings(batch_size=1), stream=stream)
    out = {}
    for spec, caching, gate in (("none", "lru", "cost"), ("none", "belady", "cost"), ("oracle", "belady", "off")):
        s = sim.run(Settings(batch_size=1, cache=capacity_text, speculation=spec, cache_policy=caching,
                             prefetch_gate=gate), bounds=False).summary
        out[f"{spec}+{caching}"] = (s["misses"] + s["prefetches"], s["mean_step_latency_s"] * 1e3)
    return out, stream


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=256, help="Monte Carlo draws per layer step (default 256)")
    ap.add_argument("--quick", action="store_true", help="only the p/d rule with admission, 4 sequences")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    seqs = 4 if args.quick else SEQS
    with tempfile.TemporaryDirectory() as tmp:
        cube, path = mixtral_like(Path(tmp) / "mixtral-like", seqs, TOKENS)
        sim, stream = simulated(path, "25%")
        steps = steps_of(cube)
        if [o for *_, objs in steps for o in objs] != stream.req_obj.tolist():
            raise SystemExit("the replay's request order is not the simulator's")
        n_objects = int(stream.layout.n_objects)
        capacity = n_objects // 4
        model = GeneratorModel(cube)
        rows = [("lru", LRU()), ("belady", Belady())]
        rules = [("p/d", True)] if args.quick else [(r, a) for r in ("p", "p/d", "next-use") for a in (False, True)]
        rows += [(f"informed {r}{' +admission' if a else ''}", Informed(model, cube, r, a, args.samples))
                 for r, a in rules]
        results = {}
        for name, policy in rows:
            results[name] = replay(steps, capacity, policy)
        bound = online_bound(cube, true_probabilities(model, cube, 4 * args.samples), capacity)
        dual, lam = lagrangian_bound(model, cube, capacity, args.samples)
    requests = len(stream.req_obj)
    (f_lru, t_lru), (f_bel, t_bel), (_, t_ref) = sim["none+lru"], sim["none+belady"], sim["oracle+belady"]
    for name, want in (("lru", f_lru), ("belady", f_bel)):
        if results[name][0] != want:
            raise SystemExit(f"replay {name} has {results[name][0]} misses, the simulator {want}")
    slope = (t_lru - t_bel) / (f_lru - f_bel)

    def ms(fetches):
        return t_bel + slope * (fetches - f_bel)

    print(f"bench_online_ceiling: mixtral-like ({seqs} sequences x {TOKENS} decode tokens, seed {SEED}), "
          f"rtx3090, batch 1, cache 25% = {capacity} of {n_objects} experts, {requests} requests; "
          f"{time.perf_counter() - start:.0f} s of wall time")
    print(f"simulated: none+lru {f_lru} fetches {t_lru:.1f} ms/step; none+belady {f_bel} fetches {t_bel:.1f} ms/step; "
          f"reference oracle+belady {t_ref:.1f} ms/step")
    print(f"ms/step from fetches: the line through those two points ({slope:.4f} ms per fetch; derived)")
    print(f"  {'policy':<30}{'fetches':>9}{'x lru':>8}{'bypass':>8}{'ms/step':>9}{'x ref':>8}")
    for name, (misses, byp, _, _) in results.items():
        print(f"  {name:<30}{misses:>9}{misses / f_lru:>8.3f}{byp:>8}{ms(misses):>9.1f}{ms(misses) / t_ref:>8.3f}")
    lb = requests - bound
    print(f"  {'bound for any online policy':<30}{lb:>9.0f}{lb / f_lru:>8.3f}{'':>8}{ms(lb):>9.1f}{ms(lb) / t_ref:>8.3f}")
    ld = requests - dual
    print(f"  {'priced estimate (lam=%.2f)' % lam:<30}{ld:>9.0f}{ld / f_lru:>8.3f}{'':>8}{ms(ld):>9.1f}"
          f"{ms(ld) / t_ref:>8.3f}")
    target = 1.30 * t_ref
    need = f_bel + (target - t_bel) / slope
    print(f"1.30x the reference = {target:.1f} ms/step = about {need:.0f} fetches ({need / f_lru:.3f}x LRU's)")
    occ_lru, occ_bel = results["lru"][2], results["belady"][2]
    print(f"per-layer occupancy (experts held, mean over layer steps): lru {occ_lru.min():.2f}..{occ_lru.max():.2f}, "
          f"belady {occ_bel.min():.2f}..{occ_bel.max():.2f} (std {occ_bel.std():.2f})")
    print(f"victims the layer step before had just used: lru {results['lru'][3]}, belady {results['belady'][3]} "
          f"of {results['belady'][0] - capacity} evictions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
