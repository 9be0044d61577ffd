"""The LPKA adapter of coordinator/adapter/lpka.ts in PyTorch, on one thread: the live reference
that `npm run bench` and `npm run bench:pytorch` time beside the TypeScript kernels.

Same function as the kernels (lpka.ts top comment, lpka-pass.ts, lpka-tfjs.ts): tokens are the rows
of A [m, r] and the columns of B [r, n]; per layer, each query set X (target rows, target columns)
takes X + 1/2 * sum over the source sets Y of MHA_XY(LN_X(X), LN_Y(Y)), then + FFN_X(LN'_X(X)) with
a tanh-form GELU. Q is (x.Wq + bq) / sqrt(attnDim / heads); head h owns features h*dh .. (h+1)*dh-1.
Weights are [in, out] (y = x.W + b), as the TypeScript side stores them. The update is
torch.optim.AdamW with clip_grad_norm_ over every parameter, which is the formulation of adamw.ts
(clip_grad_norm_ divides by norm + 1e-6 rather than norm: a 2e-8 relative difference at the
default clip of 50).

Runs as a child process speaking JSON lines. On start it prints {"ready": true, "torch": ...}, or
exits with status 3 and a message on stderr when torch cannot be imported. Requests, one a line:
  {"cmd": "load", "path": M}     weights, inputs and config from the bundle M (bench/pytorch-bundle.ts)
  {"cmd": "forward"}             -> {"A": [...], "B": [...]}  A' and B', flattened row-major
  {"cmd": "vjp"}                 -> {"grads": {name: [...]}}  d<A',gA> + <B',gB> / d(each parameter)
  {"cmd": "step", "path": M}     one clip + AdamW step with the gradients in bundle M -> {"params": {...}}
  {"cmd": "time", "reps": k}     k forward+update reps -> {"ms": [...]}, each timed by perf_counter
  {"cmd": "quit"}
Every reply carries "ok"; a failed request answers {"ok": false, "error": ...} and the server goes on.
"""
import json
import math
import os
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError as err:  # the TS client reads this and skips the live reference
    sys.stderr.write(f"lpka_torch: cannot import torch: {err}\n")
    sys.exit(3)

SETS = ("rows", "cols")
LN_EPS = 1e-5  # lpka-pass.ts LN_EPS: part of the function, not configurable
INPUTS = ("targetA", "targetB", "sourceA", "sourceB", "gA", "gB")


def read_bundle(path):
    """The manifest at `path` and its tensors (name -> float32 tensor of the stated shape)."""
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if sys.byteorder != "little":
        raise RuntimeError("bundles are little-endian float32")
    with open(os.path.join(os.path.dirname(path), manifest["data"]), "rb") as f:
        flat = torch.frombuffer(bytearray(f.read()), dtype=torch.float32)
    tensors = {}
    for t in manifest["tensors"]:
        numel = math.prod(t["shape"])
        tensors[t["name"]] = flat[t["offset"]:t["offset"] + numel].reshape(t["shape"]).clone()
    return manifest, tensors


class Lpka:
    """Parameters by their lpka.ts names, the inputs of one pair, and the optimiser."""

    def __init__(self, manifest, tensors):
        cfg = manifest["config"]
        self.heads = cfg["heads"]
        self.attn_dim = cfg["attnDim"]
        self.layers = cfg["layers"]
        self.attention_impl = manifest.get("attention", "sdpa")
        names = manifest["params"]
        self.p = {name: torch.nn.Parameter(tensors[name]) for name in names}
        self.order = [self.p[name] for name in names]
        self.inputs = {name: tensors[name] for name in INPUTS}
        opt = manifest["optimizer"]
        self.clip_norm = opt["clipNorm"]
        # fused: PyTorch's fastest CPU AdamW, same arithmetic (the default per-parameter loop took up
        # to half of a 64x10 pair's forward+update here)
        self.opt = torch.optim.AdamW(
            self.order, lr=opt["lr"], betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"],
            weight_decay=opt["weightDecay"], fused=True,
        )

    def layer_norm(self, x, prefix):
        return F.layer_norm(x, (x.shape[-1],), self.p[f"{prefix}/gain"], self.p[f"{prefix}/bias"], LN_EPS)

    def linear(self, x, prefix, w, b):
        return torch.addmm(self.p[f"{prefix}/{b}"], x, self.p[f"{prefix}/{w}"])

    def attention(self, a, xq, y):
        """One MHA module: queries xq [N, r] against keys and values from y [S, r] (both normalised)."""
        dh = self.attn_dim // self.heads
        q = self.linear(xq, a, "Wq", "bq") * (1.0 / math.sqrt(dh))
        k = self.linear(y, a, "Wk", "bk")
        v = self.linear(y, a, "Wv", "bv")
        # [T, d] -> [1, heads, T, dh]: contiguous column blocks per head
        split = lambda t: t.view(1, t.shape[0], self.heads, dh).transpose(1, 2)
        qh, kh, vh = split(q), split(k), split(v)
        if self.attention_impl == "sdpa":
            o = F.scaled_dot_product_attention(qh, kh, vh, scale=1.0)  # q is already scaled
        else:
            o = torch.softmax(qh @ kh.transpose(-2, -1), dim=-1) @ vh
        o = o.transpose(1, 2).reshape(xq.shape[0], self.attn_dim)
        return self.linear(o, a, "Wo", "bo")

    def ffn(self, prefix, x):
        h = F.gelu(self.linear(x, prefix, "W1", "b1"), approximate="tanh")
        return self.linear(h, prefix, "W2", "b2")

    def forward(self):
        i = self.inputs
        x = {"rows": i["targetA"], "cols": i["targetB"].t()}
        src = {"rows": i["sourceA"], "cols": i["sourceB"].t()}
        for l in range(self.layers):
            pre = f"layer{l}"
            # the source tokens never change; each layer normalises them with its own LN
            y = {s: self.layer_norm(src[s], f"{pre}/ln_source_{s}") for s in SETS}
            mid = {}
            for qs in SETS:
                xq = self.layer_norm(x[qs], f"{pre}/ln_query_{qs}")
                branches = [self.attention(f"{pre}/attn_{qs}_{ks}", xq, y[ks]) for ks in SETS]
                mid[qs] = x[qs] + 0.5 * (branches[0] + branches[1])
            x = {qs: mid[qs] + self.ffn(f"{pre}/ffn_{qs}", self.layer_norm(mid[qs], f"{pre}/ln_ffn_{qs}")) for qs in SETS}
        return x["rows"], x["cols"].t()

    def backward(self):
        """Parameter gradients of <A', gA> + <B', gB> (the VJP the coordinator's update runs)."""
        self.opt.zero_grad(set_to_none=True)
        a, b = self.forward()
        torch.autograd.backward((a, b), (self.inputs["gA"], self.inputs["gB"]))

    def clip_and_step(self):
        torch.nn.utils.clip_grad_norm_(self.order, self.clip_norm)
        self.opt.step()

    def forward_update_ms(self):
        t0 = time.perf_counter()
        self.backward()
        self.clip_and_step()
        return (time.perf_counter() - t0) * 1e3


def flat(t):
    return t.detach().reshape(-1).tolist()


def serve():
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    model = None

    def need_model():
        if model is None:
            raise RuntimeError("no adapter loaded: send load first")
        return model

    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "quit":
                break
            if cmd == "load":
                model = Lpka(*read_bundle(req["path"]))
                out = {"params": sum(p.numel() for p in model.order), "attention": model.attention_impl}
            elif cmd == "forward":
                with torch.no_grad():
                    a, b = need_model().forward()
                out = {"A": flat(a), "B": flat(b)}
            elif cmd == "vjp":
                m = need_model()
                m.backward()
                out = {"grads": {name: flat(p.grad) for name, p in m.p.items()}}
            elif cmd == "step":
                m = need_model()
                _, grads = read_bundle(req["path"])
                for name, p in m.p.items():
                    p.grad = grads[name].reshape(p.shape)
                m.clip_and_step()
                out = {"params": {name: flat(p) for name, p in m.p.items()}}
            elif cmd == "time":
                m = need_model()
                out = {"ms": [m.forward_update_ms() for _ in range(int(req["reps"]))]}
            else:
                raise ValueError(f"unknown cmd {cmd!r}")
            out["ok"] = True
        except Exception as err:  # report and keep serving: one bad request must not end the run
            out = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    serve()
