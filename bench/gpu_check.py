"""Every GPU acceptance figure of issue 17 in one run, as JSON and a Markdown table.

Each row is a measured figure, the obvious alternative measured in the same run, and
their ratio. Sections (``--sections``, default all), each under its own time budget; a
section whose component is missing, or that fails, records "skipped (reason)" and the
run goes on:

- ``peak``: the device's measured bf16 and fp32 matmul FLOP/s (the utilisation baseline).
- ``meta``: meta-training steps of configs/quick.yaml's model as the recipe takes them
  (`MetaStepModule`, Adam), bf16 backbone against float32: users/s, tokens/s (support
  items through the backbone) and model FLOP utilisation (FlopCounterMode's count of the
  steps over their time, against the measured bf16 peak; on a CPU, whose bf16 matmuls
  may be slower, against the larger of its bf16 and fp32 peaks).
- ``adapt``: batched adapt + score (`adapted_scores`) of ``--adapt-users`` users at support
  10 against the whole catalogue, against the per-user peft loop (`PeftUserLoop`) on a
  small sample; utilisation against the FLOP bound at the measured bf16 peak.
- ``faiss``: flat and IVF search over ``--faiss-items`` x 256 synthetic clustered vectors
  (`retrieval.index.build_index`), on the GPU (when ``faiss.get_num_gpus() > 0``) against
  the CPU in the same run, plus exact top-100 with torch on the device.

``--size small`` is a few minutes on a CPU (tiny Llama, 256 users, 50k vectors);
``--size full`` is the issue's sizes (SmolLM2-135M's first 4 layers, 4,096 users, 1M vectors).

    python bench/gpu_check.py --device cuda --size full --json gpu_check.json \
        --markdown gpu_check.md
    python bench/gpu_check.py --device cpu --size small --sections peak,adapt
    bash bench/gpu_check.sh                 # each section in its own process under timeout

``--merge DIR`` joins the per-section JSON files a split run wrote into DIR (what
bench/gpu_check.sh does); a section without its file becomes a "skipped" row.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SECTIONS = ("peak", "meta", "adapt", "faiss")
SIZES = {
    "small": {
        "backbone": "tiny-llama",
        "meta_users": [16],
        "meta_batches": 2,
        "adapt_users": 64,
        "adapt_batches": [16, 64],
        "loop_users": 4,
        "items": 1682,
        "faiss_items": 50_000,
        "faiss_queries": 200,
        "nlist": 256,
        "budget": {"peak": 15, "meta": 40, "adapt": 50, "faiss": 40},
    },
    "full": {
        "backbone": "smollm2-135m",
        "meta_users": [32, 256],
        "meta_batches": 4,
        "adapt_users": 4096,
        "adapt_batches": [1024, 4096],
        "loop_users": 16,
        "items": 1682,
        "faiss_items": 1_000_000,
        "faiss_queries": 4096,
        "nlist": 4096,
        "budget": {"peak": 30, "meta": 110, "adapt": 110, "faiss": 100},
    },
}
# square matmul side for the peak: big enough to saturate a GPU, small enough for a CPU
PEAK_SIZE = {"cuda": 8192, "cpu": 512}


def row(figure, value, unit, alternative=None, alt_value=None, note="", ratio=None) -> dict:
    """One table row; ``ratio`` defaults to value / alt_value."""
    if ratio is None and value is not None and alt_value:
        ratio = value / alt_value
    return {
        "figure": figure,
        "value": value,
        "unit": unit,
        "alternative": alternative,
        "alt_value": alt_value,
        "ratio": ratio,
        "note": note,
    }


class Section:
    """The rows and details of one section, and its deadline."""

    def __init__(self, name: str, budget_s: float) -> None:
        self.name, self.budget_s = name, budget_s
        self.started = time.perf_counter()
        self.rows: list[dict] = []
        self.details: dict = {}
        self.status = "ok"
        self.on_save = None  # writes the run's JSON so far (kept if the process is killed)

    def save(self) -> None:
        if self.on_save is not None:
            self.on_save(self)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def result(self) -> dict:
        return {
            "status": self.status,
            "seconds": round(time.perf_counter() - self.started, 1),
            "budget_s": self.budget_s,
            "rows": self.rows,
            "details": self.details,
        }


# --- sections -------------------------------------------------------------------------


def section_peak(section: Section, args, device) -> None:
    import torch
    from gpu_common import matmul_peak

    size = PEAK_SIZE.get(device.type, 1024)
    rates, sides = {}, {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        budget = max(2.0, section.left() / 2 - 1)
        rates[name], sides[name] = matmul_peak(device, dtype, size, budget)
    tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    section.details = {
        "sides": sides,
        "bf16_flops": rates["bf16"],
        "fp32_flops": rates["fp32"],
        "tf32_allowed": bool(tf32),
        "utilisation_peak": utilisation_peak(rates["bf16"], rates["fp32"], device),
    }
    note = "fp32 with TF32 " + ("on" if tf32 else "off")
    if device.type != "cuda":
        note += "; on a CPU utilisation is against the larger of the two"
    section.rows.append(
        row(
            f"matmul peak, bf16 ({sides['bf16']}^3, best of rounds)",
            rates["bf16"] / 1e12,
            "TFLOP/s",
            f"fp32 matmul peak ({sides['fp32']}^3)",
            rates["fp32"] / 1e12,
            note=note,
        )
    )


def utilisation_peak(bf16: float, fp32: float | None, device) -> float:
    """What model FLOP utilisation divides by: the bf16 peak on a GPU (the issue's yardstick);
    on a CPU, whose bf16 matmuls may be slower than fp32, the larger of the two."""
    if device.type == "cuda" or fp32 is None:
        return bf16
    return max(bf16, fp32)


def bf16_peak(results: dict, args, device) -> tuple[float, str]:
    """The matmul FLOP/s to measure utilisation against, and where it came from."""
    peak = results.get("peak", {}).get("details", {}).get("utilisation_peak")
    if peak:
        return peak, "peak section of this run"
    if args.peak_json and args.peak_json.is_file():
        saved = json.loads(args.peak_json.read_text())
        details = saved.get("sections", {}).get("peak", {}).get("details", {})
        if details.get("utilisation_peak"):
            return details["utilisation_peak"], f"peak section of {args.peak_json.name}"
    import torch
    from gpu_common import matmul_peak

    size = PEAK_SIZE.get(device.type, 1024)
    bf16, _ = matmul_peak(device, torch.bfloat16, size, 5.0, repeats=3)
    fp32 = None if device.type == "cuda" else matmul_peak(device, torch.float32, size, 5.0, 3)[0]
    return utilisation_peak(bf16, fp32, device), "measured in this process"


def section_meta(section: Section, args, device, peak: float) -> None:
    import torch
    from gpu_common import build_model, count_flops, timed, training_config

    from metarec.data.episodes import collate
    from metarec.meta.meta_step import MetaStepModule

    raw = training_config(args.config, args.set)
    sizes = list(raw.get("support_sizes") or [5, 10, 20])
    query_size = int(raw.get("query_size") or 10)
    rng = np.random.default_rng(0)
    measured: dict = {}
    for users in args.meta_users:
        episodes = []
        for _ in range(args.meta_batches):
            support = [
                rng.choice(args.items, int(rng.choice(sizes)), replace=False) for _ in range(users)
            ]
            query = [rng.choice(args.items, query_size, replace=False) for _ in range(users)]
            episodes.append((support, query))
        tokens = sum(len(s) for support, _ in episodes for s in support)
        for dtype in ("bfloat16", "float32"):
            if section.left() < 0.1 * section.budget_s:
                measured[(users, dtype)] = None
                continue
            model, meta, described = build_model(raw, args.backbone, dtype, args.items, device)
            section.details["model"] = described.replace(dtype, "<dtype>")
            step_module = MetaStepModule(model, meta, None)
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(trainable, lr=float(raw.get("outer_lr") or 1e-3))

            def steps(step_module=step_module, optimizer=optimizer, episodes=episodes):
                for support, query in episodes:  # the recipe collates every step
                    batch = collate(support, query, device)
                    objective = step_module(batch.support, batch.support_lengths, batch.query)
                    optimizer.zero_grad()
                    objective.backward()
                    optimizer.step()

            flops = count_flops(steps)  # also the warm-up
            warm = 1 if device.type == "cuda" else 0  # after the count: kernels picked
            seconds, timed_runs = timed(steps, device, 10, max(1.0, section.left() / 3), warm)
            measured[(users, dtype)] = {
                "users_per_s": users * len(episodes) / seconds,
                "tokens_per_s": tokens / seconds,
                "gflop_per_step": flops / len(episodes) / 1e9,
                "achieved_tflops": flops / seconds / 1e12,
                "utilisation": flops / seconds / peak,
                "seconds_per_step": seconds / len(episodes),
                "timed_runs": timed_runs,
            }
            del model, step_module, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
        bf16, fp32 = measured[(users, "bfloat16")], measured[(users, "float32")]
        skipped = "skipped (section time budget spent)"
        section.details[f"batch_{users}"] = {"bf16": bf16, "fp32": fp32}
        algorithm = (raw.get("meta") or {}).get("algorithm", "fomaml")
        label = f"meta-train ({algorithm} step + Adam), {users} users/step"
        alt = "same, fp32 backbone" + ("" if fp32 else f": {skipped}")
        if bf16 is None:
            section.rows.append(row(f"{label}: {skipped}", None, "users/s"))
            continue
        fp = fp32 or {}
        section.rows += [
            row(
                f"{label}, bf16 backbone",
                bf16["users_per_s"],
                "users/s",
                alt,
                fp.get("users_per_s"),
            ),
            row(
                f"{label}, bf16: support tokens",
                bf16["tokens_per_s"],
                "tokens/s",
                alt,
                fp.get("tokens_per_s"),
                note=f"each passes the backbone {meta.inner_steps + 1}x forward and backward",
            ),
            row(
                f"{label}, bf16: model FLOP utilisation",
                100 * bf16["utilisation"],
                "% of peak",
                alt,
                100 * fp["utilisation"] if fp else None,
                note=f"{bf16['gflop_per_step']:.3g} GFLOP/step; goal >= 25%",
            ),
        ]
        section.save()
    section.details.update(
        {
            "config": str(args.config),
            "overrides": args.set,
            "steps_per_run": args.meta_batches,
            "utilisation_peak": peak,
        }
    )


def section_adapt(section: Section, args, device, peak: float) -> None:
    import torch
    from gpu_common import (
        adapt_and_score,
        build_model,
        count_flops,
        histories,
        synchronize,
        timed,
        training_config,
    )

    raw = training_config(args.config, args.set)
    model, meta, described = build_model(raw, args.backbone, "bfloat16", args.items, device)
    steps = meta.inner_steps
    users = histories(args.adapt_users, [args.support], args.items)
    section.details.update(
        {
            "model": described,
            "inner_steps": steps,
            "support": args.support,
            "users": len(users),
            "items": args.items,
            "utilisation_peak": peak,
        }
    )

    def batched(model, batch_size: int, group: list[np.ndarray]) -> None:
        for start in range(0, len(group), batch_size):
            adapt_and_score(model, meta, group[start : start + batch_size], steps)

    sample = users[: args.loop_users]
    loop_label = f"per-user peft loop ({len(sample)} users)"
    budget_spent = ": skipped (section time budget spent)"
    got = {
        "rates": {},
        "loop": None,
        "loop_note": ": not measured",
        "one_by_one": None,
        "fp32": None,
        "fp32_note": ": not measured",
    }

    def emit() -> None:
        """The rows of what is measured so far (saved, so a killed run keeps them)."""
        rates = got["rates"]
        best = max((b for b in rates if rates[b]), key=lambda b: rates[b], default=None)
        bound = peak / flops_per_user
        rows = []
        for batch_size, rate in rates.items():
            label = f"adapt+score {len(users):,} users, batch {batch_size}, bf16"
            if rate is None:
                rows.append(row(label + budget_spent, None, ""))
                continue
            rows.append(
                row(
                    label,
                    rate,
                    "users/s",
                    loop_label + got["loop_note"],
                    got["loop"],
                    note=f"support {args.support}, {steps} inner steps, "
                    f"{args.items:,} items scored",
                )
            )
        if best is not None:
            rows += [
                row(
                    f"adapt+score utilisation, batch {best}, bf16",
                    rates[best],
                    "users/s",
                    f"FLOP bound at the measured peak ({flops_per_user / 1e9:.3g} GFLOP/user)",
                    bound,
                    note="ratio = model FLOP utilisation; goal >= 40%",
                ),
                row(
                    f"adapt+score batch {best}, bf16 backbone",
                    rates[best],
                    "users/s",
                    "same, fp32 backbone" + got["fp32_note"],
                    got["fp32"],
                ),
            ]
        if got["one_by_one"] is not None:
            rows.append(
                row(
                    f"adapt+score, batched code one user per pass ({len(sample)} users)",
                    got["one_by_one"],
                    "users/s",
                    loop_label + got["loop_note"],
                    got["loop"],
                )
            )
        section.rows = rows
        section.details.update(
            {
                "users_per_s": {str(b): r for b, r in rates.items()},
                "flop_bound_users_per_s": bound,
                "peft_loop_users_per_s": got["loop"],
                "one_user_per_pass": got["one_by_one"],
                "fp32_users_per_s": got["fp32"],
            }
        )
        section.save()

    warmup = 1 if device.type == "cuda" else 0  # a CPU has no kernels to pick per shape
    with model.frozen_item_vectors():
        first = min(args.adapt_batches[0], len(users))
        # the count is also the warm-up
        flops_per_user = count_flops(lambda: batched(model, first, users[:first])) / first
        section.details["gflop_per_user"] = flops_per_user / 1e9
        for position, batch_size in enumerate(args.adapt_batches):
            batch_size = min(batch_size, len(users))
            if section.left() < 0.1 * section.budget_s:
                got["rates"][batch_size] = None
                continue
            share = section.left() / (len(args.adapt_batches) - position + 2)
            seconds, _ = timed(
                lambda batch_size=batch_size: batched(model, batch_size, users),
                device,
                3 if device.type == "cuda" else 1,
                max(1.0, share),
                warmup,
            )
            got["rates"][batch_size] = len(users) / seconds
            emit()
        begin = time.perf_counter()
        for history in sample:  # the batched code, one user per pass
            adapt_and_score(model, meta, [history], steps)
        synchronize(device)
        got["one_by_one"] = len(sample) / (time.perf_counter() - begin)
        emit()

    try:
        from metarec.meta.peft_loop import PeftUserLoop
        from metarec.models.lora import save_peft_adapter

        every_item = np.arange(args.items)
        with tempfile.TemporaryDirectory() as scratch:  # the loop rereads it for every user
            folder = Path(scratch) / "adapter"
            save_peft_adapter(model.lora_layers, model.config.lora, folder, "gpu_check")
            loop = PeftUserLoop(model, folder, meta)
            with loop.model.frozen_item_vectors():
                loop.scores(loop.adapted_state(sample[0], steps), every_item)  # warm-up
                synchronize(device)
                begin = time.perf_counter()
                for history in sample:
                    loop.scores(loop.adapted_state(history, steps), every_item)
                synchronize(device)
                got["loop"], got["loop_note"] = len(sample) / (time.perf_counter() - begin), ""
            del loop
    except Exception as err:  # peft missing, or it refuses the model
        got["loop_note"] = f": skipped ({type(err).__name__}: {str(err).splitlines()[0][:100]})"
    emit()

    rates = got["rates"]
    best = max((b for b in rates if rates[b]), key=lambda b: rates[b], default=None)
    got["fp32_note"] = budget_spent
    if best is not None and section.left() > 0.1 * section.budget_s:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model32, _, _ = build_model(raw, args.backbone, "float32", args.items, device)
        with model32.frozen_item_vectors():
            seconds, _ = timed(
                lambda: batched(model32, best, users), device, 2, section.left() / 2, warmup
            )
        got["fp32"], got["fp32_note"] = len(users) / seconds, ""
    emit()


def section_faiss(section: Section, args, device) -> None:
    import torch
    from gpu_common import clustered, overlap, synchronize

    k, dim = 100, 256
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((min(10_000, args.faiss_items // 20), dim)).astype(np.float32)
    items = clustered(args.faiss_items, centres, 0.5, rng)
    queries = clustered(args.faiss_queries, centres, 0.5, rng)
    section.details.update(
        {"items": len(items), "dim": dim, "queries": len(queries), "k": k, "nlist": args.nlist}
    )
    try:
        import faiss
        from faiss_retrieval import timed_search

        from retrieval.index import IndexConfig, build_index
    except ImportError as err:
        faiss, missing = None, f"skipped ({err.name or err} not installed)"
        for kind in ("flat", "ivf"):
            section.rows.append(row(f"FAISS {kind} top-{k}: {missing}", None, "queries/s"))
    exact = None
    if faiss is not None:
        gpus = faiss.get_num_gpus()
        no_gpu = "skipped (faiss-gpu not installed: faiss.get_num_gpus() == 0)"
        section.details.update(
            {"faiss": faiss.__version__, "faiss_gpus": gpus, "threads": faiss.omp_get_max_threads()}
        )
        for kind in ("flat", "ivf"):
            if section.left() < 0.1 * section.budget_s:
                section.rows.append(
                    row(f"FAISS {kind}: skipped (section time budget spent)", None, "")
                )
                continue
            train_size = min(len(items), max(100_000, 40 * args.nlist))
            config = IndexConfig(kind=kind, nlist=args.nlist, nprobe=32, train_size=train_size)
            begin = time.perf_counter()
            built = build_index(items, config)  # on every GPU when the GPU build sees one
            section.details[f"{kind}_build_s"] = time.perf_counter() - begin
            on_gpu = "Gpu" in type(built).__name__ or isinstance(
                built, (faiss.IndexShards, faiss.IndexReplicas)
            )
            cpu_index = faiss.index_gpu_to_cpu(built) if on_gpu else built
            cpu_rows, cpu_qps = timed_search(cpu_index, queries, k)
            section.details[f"{kind}_cpu_qps"] = cpu_qps
            if kind == "flat":
                exact = cpu_rows
            gpu_qps, note = None, no_gpu
            if gpus > 0:
                gpu_index = built if on_gpu else faiss.index_cpu_to_all_gpus(built)
                gpu_rows, gpu_qps = timed_search(gpu_index, queries, k)
                note = f"GPU answers vs CPU: {overlap(gpu_rows, cpu_rows):.4f} overlap"
                del gpu_index
            if kind == "ivf" and exact is not None:
                note += f"; CPU recall@{k} vs flat {overlap(cpu_rows, exact):.4f} (nprobe 32)"
            label = f"FAISS {kind} top-{k} on GPU, {len(items):,} x {dim}"
            section.rows.append(row(label, gpu_qps, "queries/s", "FAISS CPU", cpu_qps, note=note))
            section.save()
            del built, cpu_index

    if section.left() < 0.05 * section.budget_s:
        return
    # exact top-k with torch on the device: the baseline an index on a GPU must beat
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def torch_search(where, dtype, asked):
        matrix = torch.from_numpy(items).to(where, dtype)
        asked = torch.from_numpy(asked).to(where, dtype)

        def search():
            return torch.cat([torch.topk(q @ matrix.T, k).indices for q in asked.split(1024)])

        search()
        synchronize(where)
        best = float("inf")
        for _ in range(3):
            begin = time.perf_counter()
            found = search()
            synchronize(where)
            best = min(best, time.perf_counter() - begin)
        return found.cpu().numpy(), len(asked) / best

    found, qps = torch_search(device, dtype, queries)
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    if exact is not None:
        alternative, alt_qps = "FAISS CPU flat", section.details["flat_cpu_qps"]
        note = f"recall vs FAISS flat {overlap(found, exact):.4f}"
    else:
        sample = queries[: max(1, len(queries) // 8)]  # the CPU is slow: fewer queries
        cpu_found, alt_qps = torch_search(torch.device("cpu"), torch.float32, sample)
        alternative = f"torch fp32 on the CPU ({len(sample)} queries)"
        note = f"recall vs the CPU's answers {overlap(found[: len(sample)], cpu_found):.4f}"
    section.rows.append(
        row(
            f"exact top-{k}, torch {name} matmul + topk on {device}",
            qps,
            "queries/s",
            alternative,
            alt_qps,
            note=note,
        )
    )


# --- running, merging, writing --------------------------------------------------------


def environment(device) -> dict:
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import faiss

        env["faiss"] = f"{faiss.__version__} (GPUs: {faiss.get_num_gpus()})"
    except ImportError:
        env["faiss"] = "not installed"
    return env


def run_sections(args) -> dict:
    import torch
    from gpu_common import resolve

    device = resolve(args.device)
    torch.manual_seed(0)
    results = {"sections": {}, "environment": environment(device), "args": arguments(args)}

    def save(section: Section) -> None:
        results["sections"][section.name] = section.result()
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2, default=str))

    for name in args.sections:
        budget = (args.budget or SIZES[args.size]["budget"][name]) * args.budget_scale
        section = Section(name, budget)
        section.on_save = save
        print(f"[gpu_check] {name}: budget {budget:.0f} s", file=sys.stderr, flush=True)
        section.status = "stopped before the end (rows so far kept)"
        section.save()
        try:
            if name == "peak":
                section_peak(section, args, device)
            elif name == "faiss":
                section_faiss(section, args, device)
            else:
                peak, source = bf16_peak(results["sections"], args, device)
                section.details["peak_source"] = source
                (section_meta if name == "meta" else section_adapt)(section, args, device, peak)
            section.status = "ok" if section.status.startswith("stopped") else section.status
        except Exception as err:  # a missing component or a failure: say so, go on
            reason = str(err).splitlines()[0][:160] if str(err) else ""
            section.status = f"skipped ({type(err).__name__}: {reason})"
        section.save()
        print(f"[gpu_check] {name}: {section.status}", file=sys.stderr, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def arguments(args) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def merge(folder: Path) -> dict:
    """Join ``folder/<section>.json`` files; a missing one becomes a skipped section."""
    merged: dict = {"sections": {}, "environment": {}}
    for name in SECTIONS:
        path = folder / f"{name}.json"
        if path.is_file():
            part = json.loads(path.read_text())
            merged["environment"] = merged["environment"] or part.get("environment", {})
            merged["sections"].update(part.get("sections", {}))
            merged.setdefault("args", part.get("args"))
        code = folder / f"{name}.rc"
        why = code.read_text().strip() if code.is_file() else "did not run"
        if name not in merged["sections"]:
            merged["sections"][name] = {"status": f"skipped ({why})", "rows": [], "details": {}}
        elif code.is_file():  # killed or failed after some rows: keep them, say why
            merged["sections"][name]["status"] = f"stopped ({why}); rows measured before kept"
    merged["seconds"] = round(sum(s.get("seconds", 0) for s in merged["sections"].values()), 1)
    return merged


def number(value) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def markdown(results: dict) -> str:
    env = results.get("environment", {})
    args = results.get("args") or {}
    lines = [
        f"gpu_check on {env.get('device', '?')} ({env.get('device_name', '?')}), size "
        f"{args.get('size', '?')}, backbone {args.get('backbone', '?')}; torch "
        f"{env.get('torch', '?')}, CUDA {env.get('cuda')}, faiss {env.get('faiss', '?')}",
        "",
        "Utilisation: FlopCounterMode's count over the time, against the measured bf16 matmul "
        "peak (on a CPU: the larger of its bf16 and fp32 peaks).",
        "",
        "| section | figure | measured | alternative (same run) | ratio | note |",
        "|---|---|---|---|---|---|",
    ]
    for name, section in results["sections"].items():
        if section["status"] != "ok" and not section["rows"]:
            lines.append(f"| {name} | – | {section['status']} | – | – | |")
            continue
        for item in section["rows"]:
            measured = "–" if item["value"] is None else f"{number(item['value'])} {item['unit']}"
            alternative = item["alternative"] or "–"
            if item["alt_value"] is not None:
                alternative += f": {number(item['alt_value'])} {item['unit']}"
            ratio = "–" if item["ratio"] is None else f"{item['ratio']:.3g}x"
            lines.append(
                f"| {name} | {item['figure']} | {measured} | {alternative} | {ratio} | "
                f"{item['note']} |"
            )
        if section["status"] != "ok":
            lines.append(f"| {name} | (section stopped) | {section['status']} | – | – | |")
    seconds = {n: s.get("seconds") for n, s in results["sections"].items() if s.get("seconds")}
    if seconds:
        lines += ["", "seconds per section: " + ", ".join(f"{n} {s}" for n, s in seconds.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--size", default="small", choices=tuple(SIZES))
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--config", type=Path, default=Path("configs/quick.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--backbone", help="smollm2-135m, smollm2-shape, tiny-llama (by size)")
    parser.add_argument("--adapt-users", type=int)
    parser.add_argument("--support", type=int, default=10)
    parser.add_argument("--faiss-items", type=int)
    parser.add_argument("--budget", type=float, help="seconds for each section (default by size)")
    parser.add_argument("--budget-scale", type=float, default=1.0)
    parser.add_argument("--peak-json", type=Path, help="take the bf16 peak from this run's JSON")
    parser.add_argument("--merge", type=Path, help="join a split run's <section>.json files")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    if args.merge:
        results = merge(args.merge)
    else:
        defaults = SIZES[args.size]
        args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        unknown = set(args.sections) - set(SECTIONS)
        if unknown:
            parser.error(f"--sections: unknown {sorted(unknown)}; expected {SECTIONS}")
        args.backbone = args.backbone or defaults["backbone"]
        args.adapt_users = args.adapt_users or defaults["adapt_users"]
        args.faiss_items = args.faiss_items or defaults["faiss_items"]
        for key in (
            "meta_users",
            "meta_batches",
            "adapt_batches",
            "loop_users",
            "items",
            "faiss_queries",
            "nlist",
        ):
            setattr(args, key, defaults[key])
        started = time.perf_counter()
        results = run_sections(args)
        results["seconds"] = round(time.perf_counter() - started, 1)
    table = markdown(results)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
