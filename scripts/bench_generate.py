"""Time to first token, prefill and decode tokens/s of KV-cache generation, fp32 vs int8.

A char_lm-sized model with random weights (speed does not depend on training), a
64-token prompt and 64 greedy new tokens, medians of 5 runs.
Usage: python scripts/bench_generate.py
"""
import numpy as np, qz, json
from qz import model, runtime, generate
cfg=qz.preset("char_lm"); p=qz.init_params(cfg, seed=0)
ids=np.random.default_rng(0).integers(0,256,(4,128))
r=model.observe_ranges(p,cfg,ids)
res={}
for prec in ("fp32","int8"):
    m=runtime.prepare(p,cfg,prec,r if prec=="int8" else None)
    runs=[]
    for s in range(5):
        c=generate.complete(m, list(ids[0,:64]), 64, temperature=0.0, sample_top_k=None, seed=s, moe_top_k=None, precision=None, kv_cache="fp32", plan_fn=None, on_token=None)
        runs.append(c.metrics)
    res[prec]={k: float(np.median([x[k] for x in runs])) for k in ("ttft_s","prefill_tok_s","decode_tok_s")}
print(json.dumps(res,indent=1)); print("int8/fp32 decode", res["int8"]["decode_tok_s"]/res["fp32"]["decode_tok_s"])
