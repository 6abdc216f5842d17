"""``pythoncoder info``."""

from __future__ import annotations

import argparse
import json

from pythoncoder.model.config import PRESETS, ModelConfig


def configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="1b", choices=PRESETS)
    p.add_argument("--yarn", action="store_true", help="the 8192-token inference config")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    from pythoncoder.model.params import model_info

    cfg = ModelConfig.preset(args.preset)
    if args.yarn:
        cfg = cfg.with_yarn()
    info = model_info(cfg)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    b = info["breakdown"]
    print(f"PythonCoder preset {info['preset']}: {info['param_count']:,} parameters "
          f"({info['param_count_human']})")
    for k in ("embedding", "layers", "final_norm", "lm_head", "mtp"):
        print(f"  {k:<12}{b[k]:>16,}")
    for k, v in b["per_layer"].items():
        print(f"    per layer {k:<16}{v:>12,}")
    print(f"  KV values per token per layer: {info['kv_values_per_token_per_layer']}")
    for k, v in info["dimensions"].items():
        print(f"  {k:<26}{v}")
    return 0
