"""The PyTorch twin of docs/spec.md §2: the model written again, in PyTorch, from the spec (not from
qz), as a functional dict of tensors under the spec's names. It is the reference qz's hand-written
forward and backward are checked against:

* scripts/bench.py loads qz's weights into it, checks logits, aux, loss and every gradient, then
  times both (section d);
* scripts/make_torch_golden.py dumps its outputs and gradients on small seeded models into
  reference_tests/golden/torch_twin.npz, which reference_tests/test_torch_golden.py compares qz
  against with no torch installed.

Every function takes the torch module as its first argument, so importing this file needs no torch.
"""
import numpy as np

from qz import model

AUX_COEF = 0.01           # qz.train's default: the loss the checks and the timed steps compute
RMS_EPS = 1e-5            # docs/spec.md §2.3 (the twin is written from the spec, not from qz.ops)


def twin_rmsnorm(torch, x, g, eps):
    return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + eps) * g


def twin_moe(torch, F, h, tp, p, k, S):
    # h: (N, d) -> out (N, d), aux; the gate reads h, experts get gathered rows
    N, d = h.shape
    gate = tp[p + "gate"]
    E = gate.shape[1]
    probs = torch.softmax(h @ gate, dim=-1)                                     # (N, E)
    idx = torch.argsort(-probs, dim=-1, stable=True)[:, :k]                     # ties: lower index
    sel = probs.gather(1, idx)
    w = sel / sel.sum(dim=1, keepdim=True)                                      # (N, K)
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)                                    # rows grouped by expert
    counts = torch.bincount(flat, minlength=E)
    tok = order // k
    u = h[tok]                                                                  # (R, d)
    w1, w3, w2 = tp[p + "w1"], tp[p + "w3"], tp[p + "w2"]
    ys, lo = [], 0
    for e, c in enumerate(counts.tolist()):
        if c:
            ue = u[lo:lo + c]
            ys.append((F.silu(ue @ w1[e]) * (ue @ w3[e])) @ w2[e])
        lo += c
    y = torch.cat(ys) * w.reshape(-1)[order][:, None]                           # (R, d) weighted
    out = torch.zeros_like(h).index_add(0, tok, y)
    for s in range(S):
        sw1, sw3, sw2 = tp[p + "shared.w1"][s], tp[p + "shared.w3"][s], tp[p + "shared.w2"][s]
        out = out + (F.silu(h @ sw1) * (h @ sw3)) @ sw2
    frac = (counts.to(h.dtype) / flat.numel()).detach()                         # constant
    aux = E * torch.sum(frac * probs.mean(dim=0))
    return out, aux


def twin_forward(torch, tp, cfg, inputs, k, eps=RMS_EPS):
    """docs/spec.md §2.3 in PyTorch: inputs LongTensor (B, T) or float (B, T, in) -> logits, aux."""
    F = torch.nn.functional
    B, T = inputs.shape[:2]
    d, H = cfg.d_model, cfg.n_heads
    if cfg.mode == "lm":
        x = F.embedding(inputs, tp["embed"])                                    # (B, T, d)
    else:
        x = inputs @ tp["in_proj.weight"] + tp["in_proj.bias"]
    x = x + tp["pos"][:T]
    aux = x.new_zeros(())
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        a = twin_rmsnorm(torch, x, tp[p + "attn_norm"], eps)
        q, kk, v = ((a @ tp[p + n]).reshape(B, T, H, d // H).transpose(1, 2) for n in ("wq", "wk", "wv"))
        o = F.scaled_dot_product_attention(q, kk, v, is_causal=bool(cfg.causal))  # scale 1/sqrt(D)
        x = x + o.transpose(1, 2).reshape(B, T, d) @ tp[p + "wo"]
        h = twin_rmsnorm(torch, x, tp[p + "ffn_norm"], eps).reshape(B * T, d)
        m, aux_i = twin_moe(torch, F, h, tp, p, k, cfg.n_shared_experts)
        x = x + m.reshape(B, T, d)
        aux = aux + aux_i
    x = twin_rmsnorm(torch, x, tp["final_norm"], eps)
    if cfg.mode == "classifier":
        x = x.mean(dim=1)                                                       # (B, d)
    return x @ tp["head.weight"] + tp["head.bias"], aux


def twin_loss(torch, tp, cfg, inputs, targets, k, eps=RMS_EPS):
    logits, aux = twin_forward(torch, tp, cfg, inputs, k, eps)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return ce + AUX_COEF * aux, logits, aux


def twin_params(torch, params):
    return {n: torch.from_numpy(np.array(a)).requires_grad_(True) for n, a in params.items()}


def twin_inputs(torch, cfg, x, y, dtype=np.float32):
    # classifier features in the parameters' dtype, as qz casts them
    xt = torch.from_numpy(np.asarray(x, np.int64) if cfg.mode == "lm" else np.array(x, dtype))
    return xt, torch.from_numpy(np.asarray(y, np.int64))


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def parity(torch, params, cfg, x, y, k, eps=RMS_EPS):
    """qz vs the twin on one batch (dtype of params): logits, aux, loss, every gradient."""
    logits_q, aux_q = model.forward(params, cfg, x, top_k=k)
    loss_q, grads_q = model.loss_and_grads(params, cfg, x, y, AUX_COEF, top_k=k)
    tp = twin_params(torch, params)
    xt, yt = twin_inputs(torch, cfg, x, y, params["pos"].dtype)
    loss_t, logits_t, aux_t = twin_loss(torch, tp, cfg, xt, yt, k, eps)
    loss_t.backward()
    g_err = {n: rel_err(grads_q[n], tp[n].grad.numpy()) for n in params}
    worst = max(g_err, key=g_err.get)
    return {"logits_max_rel_err": rel_err(logits_q, logits_t.detach().numpy()),
            "aux_abs_err": abs(float(aux_q) - aux_t.item()),
            "loss_qz": float(loss_q), "loss_torch": loss_t.item(),
            "loss_rel_err": abs(float(loss_q) - loss_t.item()) / max(abs(loss_t.item()), 1e-30),
            "grads_max_rel_err": g_err[worst], "grads_worst": worst}
