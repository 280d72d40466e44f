#!/usr/bin/env python3
"""The peers a user would otherwise pick, timed at exactly the shapes `cada bench kernels` runs.

    cada bench shapes --set full > shapes.json
    python3 bench/peers.py --shapes shapes.json --out peers.json [--hf]
    cada bench report --ours ours.json --peers peers.json

Writes the same report schema as `cada bench kernels` (schema 1), one record per
(id, variant), so `cada bench report` prints our/peer ratios record by record.

Timing follows the Rust harness: CUDA events around each repetition, a 512 MiB buffer
overwritten between repetitions (flushes the 50 MiB L2), warm-up first, median of the
repetitions (at least 10, until 0.5 s). Peak memory = torch.cuda.max_memory_allocated above
the level before the call.

Peers (../shared/TARGETS.md):
  attention      torch SDPA, bf16, causal, GQA, under each sdpa_kernel backend (flash, cudnn,
                 efficient): variants sdpa_flash / sdpa_cudnn / sdpa_efficient
  fused_logprob  torch matmul + log_softmax + gather (bf16 GEMM, f32 softmax): torch_naive;
                 Liger's LigerFusedLinearCrossEntropyLoss(reduction="none") when importable
  grpo_loss      a torch transcription of ../shared/CADA.md's loss (dapo aggregation),
                 eager and torch.compile'd
  logprob_grpo   torch naive head + the loss above
  layer ops      torch eager rmsnorm / silu·mul / linear (f32, TF32 off, as ours) / fused AdamW
  decode_attention  torch SDPA of one query per sequence over its KV cache (enable_gqa), the
                 cache f32 (sdpa_f32, as our default cache) and bf16 (sdpa_bf16, as
                 CADA_KV_CACHE=bf16), torch's choice of backend
  --hf           HF transformers generate (dynamic and static cache) and a train step, random
                 weights (timing does not depend on the values)
"""

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

FLUSH = None
# "cuda" for measurements; "cpu" (--device cpu) only to check that every peer runs (a dry run
# before device time is spent: the Recorder reports a failing peer as "unavailable", not as a
# crash). CPU times mean nothing and are marked so.
DEV = "cuda"
# --smoke: the HF rows at toy sizes (with --device cpu)
SMOKE = False


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def empty_cache():
    if DEV == "cuda":
        torch.cuda.empty_cache()


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def flush_l2():
    global FLUSH
    if DEV != "cuda":
        return
    if FLUSH is None:
        FLUSH = torch.empty(128 << 20, dtype=torch.float32, device=DEV)
    FLUSH.fill_(1.0)


def time_ms(fn, warmup=3, min_reps=10, max_reps=200, target_s=0.5):
    """Per-repetition CUDA-event times (ms) of fn(), L2 flushed before each."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    while len(times) < min_reps or (len(times) < max_reps and sum(times) < target_s * 1e3):
        flush_l2()
        if DEV != "cuda":
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def peak_extra_bytes(fn):
    if DEV != "cuda":
        fn()  # no allocator statistics on the CPU: run it once more, report 0
        return 0
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return max(0, torch.cuda.max_memory_allocated() - base)


def median(v):
    s = sorted(v)
    return s[len(s) // 2]


class Recorder:
    """Collects records and rewrites the report (atomically) after each one, so a crash or a
    time limit keeps everything measured before it."""

    def __init__(self, roof, filt, out, meta):
        self.records = []
        self.unavailable = []  # (id, variant, why): printed again at the end
        self.roof = roof
        self.filter = filt
        self.out = out
        self.meta = meta

    def save(self):
        report = dict(self.meta, roofline=self.roof,
                      records=[r for r in self.records if math.isfinite(r["median_ms"])])
        tmp = self.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1, allow_nan=False)
        os.replace(tmp, self.out)

    def append(self, rec):
        self.records.append(rec)
        self.save()

    def wanted(self, rid):
        return self.filter is None or self.filter in rid

    def add(self, rid, variant, fn, flops=0.0, nbytes=0.0, note=""):
        if not self.wanted(rid):
            return
        try:
            times = time_ms(fn)
            peak = peak_extra_bytes(fn)
        except torch.cuda.OutOfMemoryError:
            empty_cache()
            self.unavailable.append((rid, variant, "out of memory"))
            print(f"{rid:<56} {variant:>14}  out of memory", file=sys.stderr)
            return
        except Exception as e:  # a backend that does not support the shape
            try:
                sync()
            except Exception:
                pass
            msg = (str(e) or type(e).__name__).splitlines()[0][:80]
            self.unavailable.append((rid, variant, msg))
            print(f"{rid:<56} {variant:>14}  unavailable: {msg}", file=sys.stderr)
            return
        ms = median(times)
        s = ms / 1e3
        tflops = flops / s / 1e12 if flops and s > 0 else 0.0
        gbps = nbytes / s / 1e9 if nbytes and s > 0 else 0.0
        if flops and self.roof["gemm_tflops"]:
            frac = tflops / self.roof["gemm_tflops"]
        elif self.roof["copy_gbps"]:
            frac = gbps / self.roof["copy_gbps"]
        else:
            frac = 0.0
        rec = dict(id=rid, variant=variant, median_ms=ms, min_ms=min(times), reps=len(times),
                   flops=flops, bytes=nbytes, tflops=tflops, gbps=gbps, roofline_fraction=frac,
                   peak_extra_bytes=int(peak))
        if note:
            rec["note"] = note
        self.append(rec)
        print(f"{rid:<56} {variant:>14} {ms:10.4f} ms {tflops:8.2f} TFLOP/s {gbps:8.1f} GB/s "
              f"{peak / 2**20:9.1f} MiB", file=sys.stderr)


def rooflines():
    n = 256 << 20 if DEV == "cuda" else 4 << 20
    g = 8192 if DEV == "cuda" else 512
    src = torch.empty(n, dtype=torch.float32, device=DEV).fill_(1.0)
    dst = torch.empty_like(src)
    copy_ms = median(time_ms(lambda: dst.copy_(src), warmup=2, min_reps=10, max_reps=10))
    a = torch.randn(g, g, dtype=torch.bfloat16, device=DEV)
    b = torch.randn(g, g, dtype=torch.bfloat16, device=DEV)
    gemm_ms = median(time_ms(lambda: a @ b, warmup=3, min_reps=10, max_reps=10))
    del src, dst, a, b
    empty_cache()
    return dict(copy_gbps=8 * n / (copy_ms / 1e3) / 1e9,
                copy_what=f"{4 * n >> 20} MiB torch copy_, median of 10",
                gemm_tflops=2 * g**3 / (gemm_ms / 1e3) / 1e12,
                gemm_what=f"{g}³ bf16 torch matmul, median of 10",
                dense_peak_tflops=None)


def attention_peers(rec, shapes):
    backends = {}
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backends = {"sdpa_flash": SDPBackend.FLASH_ATTENTION,
                    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
                    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}
    except ImportError:
        sdpa_kernel = None
    for sid, s in shapes["attention"]:
        B, T, H, KV, D = s["batch"], s["seq"], s["n_heads"], s["n_kv_heads"], s["head_dim"]
        fwd_flops = 4.0 * B * H * T * T * D / 2.0
        q = torch.randn(B, H, T, D, dtype=torch.bfloat16, device=DEV, requires_grad=True)
        k = torch.randn(B, KV, T, D, dtype=torch.bfloat16, device=DEV, requires_grad=True)
        v = torch.randn(B, KV, T, D, dtype=torch.bfloat16, device=DEV, requires_grad=True)
        do = torch.randn(B, H, T, D, dtype=torch.bfloat16, device=DEV)

        def fwd():
            with torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        def fwd_bwd():
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            o.backward(do)
            q.grad = k.grad = v.grad = None

        for name, backend in backends.items():
            def under(fn, backend=backend):
                def run():
                    with sdpa_kernel(backend):
                        fn()
                return run
            rec.add(f"attention.fwd/{sid}", name, under(fwd), flops=fwd_flops)
            rec.add(f"attention.fwd_bwd/{sid}", name, under(fwd_bwd), flops=3.5 * fwd_flops)
        if not backends:
            rec.add(f"attention.fwd/{sid}", "sdpa_default", fwd, flops=fwd_flops)
            rec.add(f"attention.fwd_bwd/{sid}", "sdpa_default", fwd_bwd, flops=3.5 * fwd_flops)
        del q, k, v, do
        empty_cache()


def liger_flce():
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        return LigerFusedLinearCrossEntropyLoss(reduction="none")
    except Exception as e:
        print(f"liger-kernel not importable ({e}); its peer rows are skipped", file=sys.stderr)
        return None


def liger_fused_grpo():
    """Liger's fused linear + GRPO loss with our loss settings; chunk 8 (TARGETS.md: its
    default chunk of 1 is ~4× slower)."""
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
        return LigerFusedLinearGRPOLoss(beta=0.04, epsilon_low=0.2, epsilon_high=0.28,
                                        loss_type="dapo", use_ref_model=True, chunk_size=8)
    except Exception as e:
        print(f"liger fused GRPO not importable ({e}); its peer row is skipped", file=sys.stderr)
        return None


def logprob_peers(rec, shapes, liger):
    for sid, s in shapes["fused_logprob"]:
        N, Dm, V = s["tokens"], s["hidden"], s["vocab"]
        f = 2.0 * N * Dm * V
        if not (rec.wanted(f"fused_logprob.fwd/{sid}") or rec.wanted(f"fused_logprob.fwd_bwd/{sid}")):
            continue
        h = torch.randn(N, Dm, dtype=torch.bfloat16, device=DEV, requires_grad=True)
        w = (0.05 * torch.randn(V, Dm, dtype=torch.bfloat16, device=DEV)).requires_grad_()
        tgt = torch.randint(0, V, (N,), device=DEV)
        dlogp = torch.randn(N, device=DEV) / N

        def naive():
            logits = (h @ w.t()).float()
            return torch.log_softmax(logits, dim=-1).gather(1, tgt[:, None]).squeeze(1)

        def naive_fwd():
            with torch.no_grad():
                naive()

        def naive_fwd_bwd():
            (naive() * dlogp).sum().backward()
            h.grad = w.grad = None

        rec.add(f"fused_logprob.fwd/{sid}", "torch_naive", naive_fwd, flops=f)
        rec.add(f"fused_logprob.fwd_bwd/{sid}", "torch_naive", naive_fwd_bwd, flops=3 * f)
        if liger is not None:
            def liger_fwd_bwd():
                nll = liger(w, h, tgt)  # per-token −log p, no [N × V] buffer
                (-nll * dlogp).sum().backward()
                h.grad = w.grad = None

            def liger_fwd():
                with torch.no_grad():
                    liger(w, h, tgt)

            rec.add(f"fused_logprob.fwd/{sid}", "liger_flce", liger_fwd, flops=f)
            rec.add(f"fused_logprob.fwd_bwd/{sid}", "liger_flce", liger_fwd_bwd, flops=3 * f)
        del h, w, tgt, dlogp
        empty_cache()


def grpo_loss(logp, old, ref, mask, adv, eps_low=0.2, eps_high=0.28, beta=0.04):
    """../shared/CADA.md step 7: clipped surrogate + k3 KL, dapo aggregation."""
    ratio = torch.exp(logp - old)
    a = adv[:, None]
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a)
    d = ref - logp
    kl = torch.exp(d) - d - 1
    per_token = -surrogate + beta * kl
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def loss_inputs(B, L):
    old = -4 * torch.rand(B, L, device=DEV)
    logp = (old + 0.2 * torch.rand(B, L, device=DEV) - 0.1).requires_grad_()
    ref = old + 0.2 * torch.rand(B, L, device=DEV) - 0.1
    keep = torch.randint(L // 2, L + 1, (B, 1), device=DEV)
    mask = (torch.arange(L, device=DEV)[None, :] < keep).float()
    adv = 2 * torch.rand(B, device=DEV) - 1
    return logp, old, ref, mask, adv


def loss_peers(rec, shapes):
    compiled = torch.compile(grpo_loss)
    for sid, s in shapes["grpo_loss"]:
        B, L = s["batch"], s["len"]
        rid = f"grpo_loss.fwd_bwd/{sid}"
        if not rec.wanted(rid):
            continue
        logp, old, ref, mask, adv = loss_inputs(B, L)
        for name, fn in (("torch_eager", grpo_loss), ("torch_compile", compiled)):
            def run(fn=fn):
                fn(logp, old, ref, mask, adv).backward()
                logp.grad = None
            rec.add(rid, name, run, nbytes=20.0 * B * L)
    for sid, l, s in shapes["logprob_grpo"]:
        rid = f"logprob_grpo.fwd_bwd/{sid}"
        if not rec.wanted(rid):
            continue
        N, Dm, V = s["tokens"], s["hidden"], s["vocab"]
        B, L = l["batch"], l["len"]
        h = torch.randn(N, Dm, dtype=torch.bfloat16, device=DEV, requires_grad=True)
        w = (0.05 * torch.randn(V, Dm, dtype=torch.bfloat16, device=DEV)).requires_grad_()
        tgt = torch.randint(0, V, (N,), device=DEV)
        _, old, ref, mask, adv = loss_inputs(B, L)

        def run():
            logits = (h @ w.t()).float()
            logp = torch.log_softmax(logits, -1).gather(1, tgt[:, None]).view(B, L)
            grpo_loss(logp, old, ref, mask, adv).backward()
            h.grad = w.grad = None

        rec.add(rid, "torch_naive", run, flops=6.0 * N * Dm * V)
        liger_grpo = liger_fused_grpo()
        if liger_grpo is not None:
            h3 = h.detach().view(B, L, Dm).requires_grad_()
            tgt2 = tgt.view(B, L)

            def run_liger():
                out = liger_grpo(h3, w, tgt2, mask, adv, ref_per_token_logps=ref,
                                 old_per_token_logps=old)
                (out[0] if isinstance(out, tuple) else out).backward()
                h3.grad = w.grad = None

            rec.add(rid, "liger_fused_grpo_chunk8", run_liger, flops=6.0 * N * Dm * V)
        del h, w
        empty_cache()


def layer_peers(rec, shapes):
    # torch's matmul default is true f32 (no TF32), as our default cuBLAS mode
    for sid, r in shapes["rmsnorm"]:
        n, d = r["rows"], r["dim"]
        x = torch.randn(n, d, device=DEV)
        w = torch.randn(d, device=DEV)
        rec.add(f"rmsnorm.fwd/{sid}", "torch_eager",
                lambda: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w,
                nbytes=8.0 * n * d)
        m = 4 * d
        wl = 0.05 * torch.randn(m, d, device=DEV)
        rec.add(f"linear.fwd/{n}x{d}x{m}", "torch_f32", lambda: F.linear(x, wl),
                flops=2.0 * n * d * m)
    for sid, r in shapes["swiglu"]:
        g = torch.randn(r["rows"] * r["dim"], device=DEV)
        u = torch.randn_like(g)
        rec.add(f"swiglu.fwd/{sid}", "torch_eager", lambda: F.silu(g) * u, nbytes=12.0 * g.numel())
    for sid, p in shapes["adamw"]:
        param = torch.nn.Parameter(torch.randn(p, device=DEV))
        param.grad = 1e-3 * torch.randn(p, device=DEV)
        opt = torch.optim.AdamW([param], lr=1e-4, weight_decay=0.01, fused=DEV == "cuda")
        rec.add(f"adamw.step/{sid}", "torch_fused", opt.step, nbytes=28.0 * p)
        del param, opt


def decode_attention_peers(rec, shapes):
    # ours: every sequence at the last position of a context + 1 cache, so context + 1 keys
    for sid, d in shapes.get("decode_attention", []):
        B, H, KV, D = d["batch"], d["n_heads"], d["n_kv_heads"], d["head_dim"]
        keys = d["context"] + 1
        for variant, dtype, size in (("sdpa_f32", torch.float32, 4), ("sdpa_bf16", torch.bfloat16, 2)):
            q = torch.randn(B, H, 1, D, dtype=dtype, device=DEV)
            k = torch.randn(B, KV, keys, D, dtype=dtype, device=DEV)
            v = torch.randn(B, KV, keys, D, dtype=dtype, device=DEV)
            # k and v read once, q read and out written (as ours counts them)
            nbytes = 2.0 * size * B * keys * KV * D + 2.0 * size * B * H * D

            def run(q=q, k=k, v=v):
                with torch.no_grad():
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

            rec.add(f"decode_attention.fwd/{sid}", variant, run, nbytes=nbytes)
            del q, k, v
        empty_cache()


def hf_peers(rec):
    """HF generate tokens/s and a train step (ids match `cada bench step --records`)."""
    try:
        import transformers
    except ImportError:
        print("transformers not importable: --hf rows skipped", file=sys.stderr)
        return
    configs = {
        "smollm2-135m": transformers.LlamaConfig(
            hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=True, max_position_embeddings=8192),
        "qwen2.5-0.5b": transformers.Qwen2Config(
            hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, vocab_size=151936, rope_theta=1000000.0, rms_norm_eps=1e-6,
            tie_word_embeddings=True, max_position_embeddings=32768),
    }
    for name, cfg in configs.items():
        try:
            hf_model_peers(rec, name, cfg, transformers)
        except Exception as e:  # a transformers/inductor error must not lose the other rows
            msg = (str(e) or type(e).__name__).splitlines()[0][:120]
            rec.unavailable.append((f"hf {name}", "-", msg))
            print(f"hf {name}: skipped: {msg}", file=sys.stderr)
        empty_cache()


def hf_model_peers(rec, name, cfg, transformers):
    """One architecture: generate (dynamic and static cache) and an autocast train step."""
    cls = transformers.LlamaForCausalLM if name.startswith("smollm2") else transformers.Qwen2ForCausalLM
    model = cls(cfg).to(DEV, dtype=torch.bfloat16).eval()
    B, P, N = (2, 8, 4) if SMOKE else (64, 128, 256)
    ids = torch.randint(0, cfg.vocab_size, (B, P), device=DEV)
    for cache in ("dynamic", "static"):
        kw = dict(max_new_tokens=N, min_new_tokens=N, do_sample=True, temperature=1.0,
                  top_p=1.0, top_k=0, pad_token_id=0)
        if cache == "static":
            kw["cache_implementation"] = "static"

        def gen():
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        rid = f"rollout/{name}/B{B}/P{P}/N{N}"
        if rec.wanted(rid):
            try:
                t = time_ms(gen, warmup=1, min_reps=3, max_reps=3, target_s=0)
            except Exception as e:
                msg = (str(e) or type(e).__name__).splitlines()[0][:120]
                rec.unavailable.append((rid, f"hf_generate_{cache}", msg))
                print(f"{rid} hf_generate_{cache}: skipped: {msg}", file=sys.stderr)
                continue
            ms = median(t)
            rec.append(dict(
                id=rid, variant=f"hf_generate_{cache}", median_ms=ms, min_ms=min(t),
                reps=len(t), flops=0.0, bytes=0.0, tflops=0.0, gbps=0.0,
                roofline_fraction=0.0, peak_extra_bytes=None,
                note=f"{B * N / (ms / 1e3):.0f} generated tok/s"))
            print(f"{rid} hf_generate_{cache}: {B * N / (ms / 1e3):.0f} tok/s", file=sys.stderr)
    del model
    empty_cache()
    # train step: f32 master weights, bf16 autocast, fused AdamW, 4 × 4096 tokens
    model = cls(cfg).to(DEV).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=DEV == "cuda")
    Bt, T = (1, 32) if SMOKE else (4, 4096)
    ids = torch.randint(0, cfg.vocab_size, (Bt, T), device=DEV)

    def step():
        with torch.autocast(DEV, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    rid = f"train_step/{name}/B{Bt}/T{T}"
    if rec.wanted(rid):
        rec.add(rid, "hf_autocast_bf16", step, note="fwd+bwd+fused AdamW")
    del model, opt
    empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", required=True, help="output of `cada bench shapes`")
    ap.add_argument("--out", required=True)
    ap.add_argument("--filter", default=None, help="only ids containing this text")
    ap.add_argument("--hf", action="store_true", help="also HF generate and train-step peers")
    ap.add_argument("--no-kernels", action="store_true", help="skip the kernel peers (with --hf: HF only)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: a dry run that checks every peer runs (its times mean nothing)")
    ap.add_argument("--smoke", action="store_true", help="the --hf rows at toy sizes")
    args = ap.parse_args()
    global DEV, SMOKE
    DEV, SMOKE = args.device, args.smoke
    if DEV == "cuda" and not torch.cuda.is_available():
        sys.exit("peers.py: needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "--device cpu only checks that the peers run")
    with open(args.shapes) as f:
        shapes = json.load(f)
    roof = rooflines()
    print(f"roofline: copy {roof['copy_gbps']:.0f} GB/s, GEMM {roof['gemm_tflops']:.1f} TFLOP/s",
          file=sys.stderr)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        driver = "unknown"
    meta = dict(schema=1, tool=f"peers.py (torch {torch.__version__})",
                device=torch.cuda.get_device_name() if DEV == "cuda" else "cpu (dry run: times mean nothing)", driver=f"{driver} / CUDA {torch.version.cuda}",
                date=now_utc(), commit="-", set=shapes.get("set", "?"))
    rec = Recorder(roof, args.filter, args.out, meta)
    rec.save()
    if not args.no_kernels:
        attention_peers(rec, shapes)
        logprob_peers(rec, shapes, liger_flce())
        loss_peers(rec, shapes)
        layer_peers(rec, shapes)
        decode_attention_peers(rec, shapes)
    if args.hf:
        hf_peers(rec)
    rec.save()
    print(f"wrote {args.out} ({len(rec.records)} records)", file=sys.stderr)
    if rec.unavailable:
        print(f"{len(rec.unavailable)} peer rows did not run:", file=sys.stderr)
        for rid, variant, why in rec.unavailable:
            print(f"  {rid} {variant}: {why}", file=sys.stderr)


if __name__ == "__main__":
    main()
