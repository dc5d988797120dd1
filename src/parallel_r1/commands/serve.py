"""``parallel-r1 serve``: a trained model behind an OpenAI-compatible endpoint (docs/serve.md).

    parallel-r1 serve --model runs/demo/rl --port 8000
    parallel-r1 serve --model runs/demo/rl --api_key secret --max_new_tokens 1024 --num_paths 2

The server's sampling defaults are the decoding flags (``DecodingConfig``); a request's
``max_tokens``, ``temperature``, ``top_p``, ``seed`` and the extensions ``num_paths``,
``max_blocks``, ``max_path_tokens``, ``variant`` replace them for that request.
"""

from __future__ import annotations

import dataclasses
import sys

from ..decoding.config import DecodingConfig
from ..serve import ServeConfig

HELP = "serve a model behind an OpenAI-compatible HTTP endpoint (exact parallel decoding)"

CONFIG = (ServeConfig, DecodingConfig)


def run(cfg: ServeConfig, dcfg: DecodingConfig | None = None) -> int:
    from ..decoding import ParallelEngine
    from ..devices import resolve_device
    from ..models import load_with_tags
    from ..serve import build_app, serve_forever

    dcfg = dcfg or DecodingConfig()
    device = resolve_device(cfg.device)
    if dcfg.dtype in (None, "auto"):
        dcfg = dataclasses.replace(dcfg, dtype="bfloat16" if device.type == "cuda" else "float32")
    model, tok, added = load_with_tags(cfg.model)
    model = model.to(device).eval()
    if added:
        print(f"serve: {cfg.model} has no tag tokens; added them in memory (as prepare-model does)", file=sys.stderr)
    context = getattr(model.config, "max_position_embeddings", None)
    app = build_app(cfg, tok, ParallelEngine(model, tok, dcfg), context=context, worker_thread=False)
    print(f"serve: {cfg.served_model_name} on http://{cfg.host}:{cfg.port}/v1", file=sys.stderr)
    serve_forever(app, cfg.host, cfg.port)
    return 0
