#!/usr/bin/env python3
"""TRL's own GRPO loss on random batches -> tests/fixtures/trl_grpo_loss.json, for
tests/trl_parity.rs: our loss, its gradient and its metrics must be TRL's.

It runs `trl.trainer.grpo_trainer.GRPOTrainer._compute_loss` itself (TRL 1.16.0), not a
transcription: the trainer object is a stand-in holding only the settings that method reads
(one process, no gradient accumulation, token-level importance sampling, no entropy or vLLM
terms), and the model call is replaced by the batch's log-probs, a float64 leaf tensor, so
`loss.backward()` gives TRL's d(loss)/d(logp). Metrics are read from what the method logs.

Advantages: TRL computes them inline in `_generate_and_score_completions`, which cannot run
without a model, so `trl_advantages` below is that code's arithmetic for one reward function
("sum_then_normalize"), transcribed (four lines) around TRL's own `nanstd`, in float64.

Log-probs: TRL's `_get_per_token_logps_and_entropies` divides the logits by the temperature and
calls its `selective_log_softmax` and `entropy_from_logits`; `logprob_cases` runs those two on
`hidden @ lm_headᵀ / T` and differentiates Σ c·logp for d(hidden) and d(lm_head).

    pip install --no-deps --target /tmp/trlenv trl==1.16.0 accelerate datasets pandas \
        multiprocess pyarrow dill xxhash fsspec pytz tzdata python-dateutil
    PYTHONPATH=/tmp/trlenv:/tmp/hfenv python3 scripts/trl_grpo_loss_dump.py   # hfenv: torch
"""
import collections
import json
import pathlib
import types

import torch
import trl
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import entropy_from_logits, nanstd, selective_log_softmax

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "trl_grpo_loss.json"


class OneProcess:
    """accelerate's Accelerator on one process: gather and reduce are the identity."""

    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def trainer(loss_type, beta, eps_low, eps_high, max_len, logp, level="token", delta=None):
    t = types.SimpleNamespace(
        loss_type=loss_type, beta=beta, epsilon_low=eps_low, epsilon_high=eps_high,
        max_completion_length=max_len, importance_sampling_level=level,
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, aux_loss_enabled=False,
        use_vllm=False, vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False,
        current_gradient_accumulation_steps=1, accelerator=OneProcess(),
        model=types.SimpleNamespace(training=True),
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=delta, steps_per_generation=1),
        _metrics={"train": collections.defaultdict(list)},
    )
    # the model forward: the batch's log-probs (and entropies TRL only logs)
    t._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
    return t


def batch(gen, b, t, empty_row):
    """Right-padded completions: lengths 1..t, one row fully masked when `empty_row`;
    log-prob ratios spread across both clip boundaries; one zero advantage."""
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    lengths[0] = t
    if empty_row:
        lengths[2] = 0
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    logp = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 4 - 0.05
    old = logp + torch.randn(b, t, generator=gen, dtype=torch.float64) * 0.25
    ref = logp + torch.randn(b, t, generator=gen, dtype=torch.float64) * 0.3
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    adv[1] = 0.0
    return logp, old, ref, mask, adv


def trl_advantages(rewards, num_generations, scale_rewards):
    """GRPOTrainer._generate_and_score_completions' advantages (TRL 1.16.0), one reward function."""
    mean_grouped = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped = mean_grouped.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations, dim=0)
    else:
        std_rewards = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean_grouped
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    return advantages


def advantage_cases(gen):
    """Rewards of 6 groups of 8 and 40 groups of 3, on a grid of binary-exact values (ties, an
    all-equal group whose centred rewards are then exactly 0 in TRL too)."""
    out = []
    for groups, g in [(6, 8), (40, 3)]:
        rewards = (torch.randint(-2, 3, (groups * g,), generator=gen) * 0.5).double()
        rewards[:g] = 1.0  # an all-equal group
        for scale in ["group", "batch", "none"]:
            out.append({"group_size": g, "scale_rewards": scale, "rewards": rewards.tolist(),
                        "advantages": trl_advantages(rewards, g, scale).tolist()})
    return out


def logprob_cases(gen):
    out = []
    for n, d, v, temperature in [(7, 16, 150, 1.0), (5, 8, 257, 0.7)]:
        hidden = torch.randn(n, d, generator=gen, dtype=torch.float64, requires_grad=True)
        w = (torch.randn(v, d, generator=gen, dtype=torch.float64) * 0.5).requires_grad_(True)
        targets = torch.randint(0, v, (n,), generator=gen)
        c = torch.randn(n, generator=gen, dtype=torch.float64)
        logits = (hidden @ w.T) / temperature
        logp = selective_log_softmax(logits[None], targets[None])[0]
        entropy = entropy_from_logits(logits[None])[0]
        (c * logp).sum().backward()
        out.append({
            "n": n, "dim": d, "vocab": v, "temperature": temperature,
            "hidden": hidden.detach().reshape(-1).tolist(), "w": w.detach().reshape(-1).tolist(),
            "targets": targets.tolist(), "dlogp": c.tolist(),
            "logp": logp.detach().tolist(), "entropy": entropy.detach().tolist(),
            "dhidden": hidden.grad.reshape(-1).tolist(), "dw": w.grad.reshape(-1).tolist(),
        })
    return out


def main():
    gen = torch.Generator().manual_seed(20261203)
    cases, batches = [], []
    shapes = [(6, 7, True), (4, 16, False), (9, 5, True)]
    for si, (b, t, empty_row) in enumerate(shapes):
        logp0, old, ref, mask, adv = batch(gen, b, t, empty_row)
        batches.append({
            "batch": b, "len": t, "logp": logp0.reshape(-1).tolist(),
            "old_logp": old.reshape(-1).tolist(), "ref_logp": ref.reshape(-1).tolist(),
            "mask": mask.reshape(-1).tolist(), "advantages": adv.tolist(),
        })
        # GSPO's sequence-level ratio after the token-level cases: one clip range (the ratio of
        # a mean log-ratio is closer to 1, so 0.04 puts completions on both sides of it)
        settings = [(lt, beta, eps, "token", None) for lt in ["grpo", "dapo", "dr_grpo"]
                    for beta in [0.0, 0.04] for eps in [(0.2, 0.2), (0.2, 0.28)]]
        settings += [(lt, beta, (0.04, 0.04), "sequence", None) for lt in ["grpo", "dapo", "dr_grpo"]
                     for beta in [0.0, 0.04]]
        # two-sided clipping (TRL's delta): a cap just above the clip range, which some ratios pass
        settings += [(lt, 0.04, (0.2, 0.28), "token", 1.3) for lt in ["grpo", "dapo", "dr_grpo"]]
        settings += [("grpo", 0.0, (0.04, 0.04), "sequence", 1.05)]
        for loss_type, beta, (eps_low, eps_high), level, delta in settings:
            max_len = t + 3  # dr_grpo's constant, longer than any completion here
            logp = logp0.clone().requires_grad_(True)
            tr = trainer(loss_type, beta, eps_low, eps_high, max_len, logp, level, delta)
            inputs = {
                "prompt_ids": torch.zeros(b, 1, dtype=torch.long),
                "prompt_mask": torch.ones(b, 1, dtype=torch.long),
                "completion_ids": torch.zeros(b, t, dtype=torch.long),
                "completion_mask": mask,
                "advantages": adv,
                "old_per_token_logps": old,
                "ref_per_token_logps": ref,
                "num_items_in_batch": mask.sum(),
            }
            loss = GRPOTrainer._compute_loss(tr, None, inputs)
            loss.backward()
            m = tr._metrics["train"]
            cases.append({
                "batch": si, "loss_type": loss_type, "beta": beta,
                "epsilon_low": eps_low, "epsilon_high": eps_high,
                "importance_sampling_level": level, "delta": delta,
                "max_completion_length": max_len,
                "loss": loss.item(), "dlogp": logp.grad.reshape(-1).tolist(),
                "kl_mean": m["kl"][0] if beta != 0.0 else 0.0,
                "clip_ratio_low": m["clip_ratio/low_mean"][0],
                "clip_ratio_high": m["clip_ratio/high_mean"][0],
                "clip_ratio_region": m["clip_ratio/region_mean"][0],
            })
        print(f"batch {si}: {b} x {t}, {int(mask.sum())} tokens")
    fixture = {
        "generator": f"scripts/trl_grpo_loss_dump.py: GRPOTrainer._compute_loss of trl {trl.__version__}, "
        f"torch {torch.__version__}, float64",
        "batches": batches,
        "cases": cases,
        "advantages": advantage_cases(gen),
        "logprob": logprob_cases(gen),
    }
    OUT.write_text(json.dumps(fixture) + "\n")
    print(f"{len(cases)} cases -> {OUT}")


if __name__ == "__main__":
    main()
