#!/usr/bin/env python3
"""Generate proxy/prices/model_prices.json from LiteLLM's model_prices.json.

Keeps chat-mode models that have both an input and an output price, and for each
one the fields the proxy prices with. Prices are converted to decimal strings from
the JSON number's *text* (json.load(parse_float=Decimal)), never through a binary
float, so `2.5e-06` becomes "0.0000025" exactly.

Usage: python3 scripts/gen_prices.py [SOURCE] [DEST]
  SOURCE defaults to ../shared/data/model_prices.json (relative to the repo root)
  DEST   defaults to proxy/prices/model_prices.json
"""
import decimal
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRICE_FIELDS = [
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "cache_creation_input_token_cost_above_1hr",
    "output_cost_per_reasoning_token",
    "input_cost_per_audio_token",
    "output_cost_per_audio_token",
]
LIMIT_FIELDS = ["max_input_tokens", "max_output_tokens"]
# Prices that change when a request's input is long (Gemini above 128k or
# 200k prompt tokens, Claude's 1M-context models and Grok 4 above 200k or
# 128k): LiteLLM writes them as `<field>_above_<N>k_tokens`.
LONG_CONTEXT_FIELDS = [
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
]
LONG_CONTEXT_KEY = re.compile(r"^(?P<field>[a-z_]+)_above_(?P<k>[0-9]+)k_tokens$")


def decimal_text(value):
    """Exact plain-notation text of a price (no exponent, no trailing zeros)."""
    if isinstance(value, bool) or not isinstance(value, (int, decimal.Decimal)):
        raise ValueError(f"not a number: {value!r}")
    d = decimal.Decimal(value)
    if d < 0:
        raise ValueError(f"negative price: {value!r}")
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def token_limit(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        return int(value)
    return None


def anthropic_one_hour_write(name, spec, entry):
    """Anthropic bills a 1-hour cache write at twice the base input price, for
    every model (docs.anthropic.com, prompt caching pricing). LiteLLM's table
    has 0.000006 (Sonnet's) for some Haiku and Opus models: such a value is
    dropped, so the proxy prices those writes by the documented rule."""
    field = "cache_creation_input_token_cost_above_1hr"
    if entry.get("provider") != "anthropic" or field not in entry:
        return
    rule = decimal.Decimal(entry["input_cost_per_token"]) * 2
    if decimal.Decimal(entry[field]) != rule:
        print(f"{name}: dropped {field} {entry[field]} (Anthropic's rule: 2 x input = {decimal_text(rule)})")
        del entry[field]


# xAI caches prompts by itself and bills the cached part of grok-3's and
# grok-4's (and their -mini and -fast variants') at a quarter of the input
# price (docs.x.ai, models and pricing: grok-4 and grok-3 $3 / cached $0.75,
# grok-3-mini $0.30 / cached $0.075 per million). LiteLLM has no cached price
# for them, so the cached part would be charged at the full input price.
XAI_QUARTER_PRICE_CACHE = re.compile(r"^xai/grok-(3|4)(-(0709|latest|beta|fast|mini)(-(beta|latest))?)*$")


def xai_cached_input(name, entry):
    if "cache_read_input_token_cost" in entry or not XAI_QUARTER_PRICE_CACHE.match(name):
        return
    quarter = decimal.Decimal(entry["input_cost_per_token"]) / 4
    entry["cache_read_input_token_cost"] = decimal_text(quarter)
    print(f"{name}: cached input at a quarter of the input price, {entry['cache_read_input_token_cost']}")


def long_context(name, spec):
    """The model's long-context tiers, lowest threshold first: each says above
    how many input tokens it applies and the prices it replaces. A tier
    without both an input and an output price is left out (the proxy would
    otherwise keep the lower price on one side), and so is one cheaper than
    the base prices: providers charge long prompts more, never less (LiteLLM
    gives Vertex's gemini-2.0-flash-exp a free tier above 128k tokens)."""
    tiers = {}
    for key, value in spec.items():
        m = LONG_CONTEXT_KEY.match(key)
        if not m or m.group("field") not in LONG_CONTEXT_FIELDS or value is None:
            continue
        tier = tiers.setdefault(int(m.group("k")) * 1000, {})
        tier[m.group("field")] = decimal_text(value)
    out = []
    for above in sorted(tiers):
        tier = tiers[above]
        if "input_cost_per_token" not in tier or "output_cost_per_token" not in tier:
            continue
        cheaper = [
            f for f in ("input_cost_per_token", "output_cost_per_token")
            if decimal.Decimal(tier[f]) < decimal.Decimal(spec[f])
        ]
        if cheaper:
            print(f"{name}: dropped the tier above {above} input tokens ({', '.join(cheaper)} below the base price)")
            continue
        out.append({"above_input_tokens": above, **{f: tier[f] for f in LONG_CONTEXT_FIELDS if f in tier}})
    return out


def service_tiers(name, spec):
    """Prices of calls served at OpenAI's `priority` and `flex` processing
    tiers (`<field>_priority`, `<field>_flex`). A tier without both an input
    and an output price is left out: LiteLLM gives gpt-5-nano a priority
    input price (gpt-5's) and no output price, and OpenAI sells no priority
    tier for it."""
    out = {}
    for tier in ("priority", "flex"):
        prices = {f: spec[f + "_" + tier] for f in LONG_CONTEXT_FIELDS if spec.get(f + "_" + tier) is not None}
        if "input_cost_per_token" in prices and "output_cost_per_token" in prices:
            out[tier] = {f: decimal_text(v) for f, v in prices.items()}
        elif prices:
            print(f"{name}: dropped the {tier} tier (no input and output price)")
    return out


def web_search(spec):
    """OpenAI's fee per call of a model that searches the web
    (`gpt-4o-search-preview`, or a request with `web_search_options`), by
    the request's `search_context_size`; LiteLLM's
    `search_context_cost_per_query`. Kept only when all three sizes are."""
    fees = spec.get("search_context_cost_per_query")
    if not isinstance(fees, dict):
        return None
    sizes = {size: fees.get("search_context_size_" + size) for size in ("low", "medium", "high")}
    if any(v is None for v in sizes.values()):
        return None
    return {size: decimal_text(v) for size, v in sizes.items()}


# LiteLLM's `supports_reasoning` is missing for some names of models that
# always reason (`xai/grok-4`, `o1-mini`, `gemini/gemini-2.5-pro-preview-*`,
# Azure's and OpenRouter's o1) and set for GPT-5's chat model, which does not
# reason. Judged by the model's own name, whoever serves it.
ALWAYS_REASONS = re.compile(
    r"^(o[134](-|$)|grok-4(?!.*non-reasoning)|grok-code-fast|gemini-2\.5-pro(?!.*-tts)|gemini-3)"
)
NEVER_REASONS = re.compile(r"^gpt-5-chat")


def reasons(name, spec):
    model = name.rsplit("/", 1)[-1]
    if NEVER_REASONS.match(model):
        return False
    return spec.get("supports_reasoning") is True or bool(ALWAYS_REASONS.match(model))


def convert(models):
    out = {}
    for name in sorted(models):
        spec = models[name]
        if not isinstance(spec, dict) or spec.get("mode") != "chat":
            continue
        if "input_cost_per_token" not in spec or "output_cost_per_token" not in spec:
            continue
        entry = {"provider": spec.get("litellm_provider", "")}
        for field in PRICE_FIELDS:
            if field in spec and spec[field] is not None:
                entry[field] = decimal_text(spec[field])
        for field in LIMIT_FIELDS:
            limit = token_limit(spec.get(field))
            if limit is not None:
                entry[field] = limit
        # Models that reason before answering by default (OpenAI's o-series
        # and GPT-5, Gemini 2.5, Grok's reasoning models), whose reasoning
        # counts against the output cap: the proxy holds and sends them a
        # larger default cap when the request names none, and charges a
        # stream cut before its usage for the reasoning it did not stream.
        if reasons(name, spec):
            entry["supports_reasoning"] = True
        tiers = long_context(name, spec)
        if tiers:
            entry["long_context"] = tiers
        served = service_tiers(name, spec)
        if served:
            entry["service_tiers"] = served
        search = web_search(spec)
        if search:
            entry["web_search_cost_per_call"] = search
        anthropic_one_hour_write(name, spec, entry)
        xai_cached_input(name, entry)
        out[name] = entry
    return out


# A date (-20250514, -2024-08-06, -0709 as month and day) or -latest; not
# a release number such as Mistral's -2505 (year and month).
FAMILY_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2}|(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])|latest)$")
EXTRAS = ["long_context", "service_tiers", "web_search_cost_per_call"]


def share_within_families(table):
    """LiteLLM gives long-context tiers, service tiers and search fees to
    some names of a model and not to others (`gpt-4o` has priority prices,
    `gpt-4o-2024-08-06` none; `xai/grok-4-0709` has long-context prices,
    `xai/grok-4` none), and the proxy prices a model under the first name
    that matches. So names of one family (the same name but for a date or
    `-latest`, from one provider, at the same base prices) share what one
    of them has, when those that have it agree."""
    families = {}
    for name, entry in table.items():
        family = FAMILY_SUFFIX.sub("", name)
        key = (family, entry["provider"], entry["input_cost_per_token"], entry["output_cost_per_token"])
        families.setdefault(key, []).append(name)
    for (family, _, _, _), names in sorted(families.items()):
        if len(names) < 2:
            continue
        for extra in EXTRAS:
            values = {json.dumps(table[n][extra], sort_keys=True) for n in names if extra in table[n]}
            if len(values) != 1:
                continue
            value = json.loads(values.pop())
            for n in names:
                if extra not in table[n]:
                    table[n][extra] = value
                    print(f"{n}: {extra} shared from its family {family}")


def main():
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "model_prices.json"
    dest = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "proxy" / "prices" / "model_prices.json"
    raw = src.read_bytes()
    models = json.loads(raw, parse_float=decimal.Decimal)
    table = convert(models)
    share_within_families(table)
    for name, entry in table.items():
        if "service_tiers" in entry and "long_context" in entry:
            # The proxy prices a call at its service tier or at its
            # long-context tier, not both combined: a model with both
            # needs that rule first.
            raise SystemExit(f"{name}: both service tiers and long-context prices")
    lines = ["{"]
    lines.append('  "source": ' + json.dumps(
        "LiteLLM model_prices_and_context_window.json (MIT), sha256 " + hashlib.sha256(raw).hexdigest()
    ) + ",")
    lines.append('  "unit": "USD per token",')
    lines.append('  "models": {')
    items = list(table.items())
    for i, (name, entry) in enumerate(items):
        sep = "," if i + 1 < len(items) else ""
        lines.append("    " + json.dumps(name) + ": " + json.dumps(entry, separators=(",", ":")) + sep)
    lines.append("  }")
    lines.append("}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(table)} models to {dest}")


if __name__ == "__main__":
    main()
