"""The targets a benchmark result is judged against, its ratios, and its human-readable table."""

import json
import os

# Targets of the performance issue, checked in the report (benchmarks, not tests).
TARGET_FULL_OVER_BARE = 1.10
TARGET_MAPPER_SHARE = 0.10
TARGET_QUEUE_GROWTH = 0.05


def ratios(result, queue_sizes, batch_size):
    """The targets' ratios from wall-clock medians ("value", judged against the target) and from CPU-time
    medians ("value_cpu": the ratio of work, the one to read on a loaded CPU)."""
    steps, mapper = result["steps"], result["mapper"]
    first = steps[f"full_q{queue_sizes[0]}"]

    def entry(ratio, target):
        value, value_cpu = ratio("median_s", "median_s_per_pair"), ratio("median_cpu_s", "median_cpu_s_per_pair")
        return {"value": value, "value_cpu": value_cpu, "target": target, "met": value <= target}

    out = {
        "full_over_bare": entry(lambda step, _: first[step] / steps["bare"][step], TARGET_FULL_OVER_BARE),
        "mapper_per_image_over_step_per_image": entry(
            lambda step, pair: mapper[pair] / (first[step] / batch_size), TARGET_MAPPER_SHARE
        ),
    }
    for q in queue_sizes[1:]:
        out[f"queue_{queue_sizes[0]}_to_{q}_step_change"] = entry(
            lambda step, _: steps[f"full_q{q}"][step] / first[step] - 1.0, TARGET_QUEUE_GROWTH
        )
    return out


def format_report(result):
    """The human-readable table of a ``run_benchmark`` result."""
    s = result["settings"]
    lines = [
        f"VADeR benchmark: R{s['depth']}-FPN, {s['crop_size']} px, batch {s['batch']}, {s['device']}"
        f"{', AMP' if s['amp'] else ''}{', channels_last' if s['channels_last'] else ''}, {s['threads']} threads; "
        f"{s['timed_rounds']} timed rounds after {s['warmup_rounds']} warm-up; load average "
        f"{_format_load(result['load_average_start'])} -> {_format_load(result['load_average_end'])}",
        "",
        f"{'step (median)':<22}{'wall s':>9}{'cpu s':>9}{'images/s':>10}{'step peak MB':>14}{'state MB':>10}",
    ]
    rows = dict(result["steps"])
    if "pipeline" in result:
        rows["pipeline (loader)"] = result["pipeline"]
    for name, step in rows.items():
        peak = "n/a" if step["step_peak_mb"] is None else f"{step['step_peak_mb']:.0f}"
        lines.append(f"{name:<22}{step['median_s']:>9.3f}{step['median_cpu_s']:>9.3f}{step['images_per_s']:>10.1f}"
                     f"{peak:>14}{step['state_mb']:>10.0f}")
    lines += ["", f"{'components of the full step, timed alone':<52}{'wall s':>9}{'cpu s':>9}"]
    lines += [f"  {name:<50}{t['wall_s']:>9.4f}{t['cpu_s']:>9.4f}" for name, t in result["components"].items()]
    mapper = result["mapper"]
    lines += ["", f"view mapper: {mapper['median_s_per_pair'] * 1000:.1f} ms per pair (cpu "
              f"{mapper['median_cpu_s_per_pair'] * 1000:.1f} ms), {mapper['pairs_per_s_per_worker']:.1f} pairs/s "
              "per worker (one thread)"]
    if "loader" in result:
        loader = result["loader"]
        lines.append(f"data loader: {loader['images_per_s']:.1f} images/s with {loader['workers']} workers "
                     f"(first batch after {loader['first_batch_s']:.1f} s)")
    macs = result["multiply_adds_per_image"]
    shares = macs["loss_share_of_step"].items()
    lines.append(f"multiply-adds per image: network step {macs['network_step_gmac']:.2f} G (4 encoder forwards); "
                 + "loss " + ", ".join(f"{macs['loss_gmac'][q]:.2f} G = {share:.1%} at {q}" for q, share in shares))
    memory = result["memory"]
    gpu = memory["gpu_max_allocated_mb"]
    lines.append(f"process peak RSS {memory['process_peak_rss_mb']:.0f} MB"
                 + ("" if gpu is None else f", GPU max allocated {gpu:.0f} MB"))
    lines += ["", f"{'ratios':<46}{'wall':>9}{'cpu':>9}   target (judged on wall time)"]
    for name, r in result["ratios"].items():
        if "change" in name:
            values, target = f"{r['value']:>+9.1%}{r['value_cpu']:>+9.1%}", f"< {r['target']:.0%}"
        else:
            values, target = f"{r['value']:>9.3f}{r['value_cpu']:>9.3f}", f"<= {r['target']:.2f}"
        lines.append(f"  {name:<44}{values}   {target}: {'met' if r['met'] else 'NOT met'}")
    lines.append(f"\nwall time {result['wall_s']:.0f} s")
    return "\n".join(lines)


def _format_load(load):
    return "n/a" if load is None else "/".join(f"{x:.1f}" for x in load)


def write_json(result, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
