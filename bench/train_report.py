"""Tables and target checks for bench/train_throughput.py, from its per-loop summary dictionaries."""

from __future__ import annotations

from typing import Any

# The two targets, checked on one preset with the numbers of the same run.
TARGET_PRESET = "small"
MAX_WAIT_AND_PADDING_SHARE = 0.05
MIN_TRAINER_TO_MODEL_ONLY = 0.95


def number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(summaries: list[dict[str, Any]]) -> str:
    """Format the throughput figures as a Markdown table, one row per preset and loop.

    The `x plain` column divides each wall throughput by the plain loop's on the same preset.
    """
    header = ("| preset | loop | steps | clips/step | audio/step (s) | s/step | audio-s/s "
              "| wall audio-s/s | audio h/GPU-h | x plain | data wait | padding |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    plain = {s["preset"]: s["wall_audio_seconds_per_second"] for s in summaries if s["loop"] == "plain"}
    for s in summaries:
        ratio = s["wall_audio_seconds_per_second"] / plain[s["preset"]] if s["preset"] in plain else None
        rows.append(
            f"| {s['preset']} | {s['loop']} | {s['steps']} | {s['clips_per_step']:.1f} "
            f"| {s['step_audio_seconds']:.1f} | {s['seconds_per_step']:.3f} "
            f"| {s['audio_seconds_per_second']:.1f} | {s['wall_audio_seconds_per_second']:.1f} "
            f"| {number(s['audio_hours_per_gpu_hour'], '.1f')} | {number(ratio, '.2f')} "
            f"| {s['data_wait_share']:.1%} | {s['padding_share']:.1%} |"
        )
    return "\n".join(rows)


def format_gpu_table(summaries: list[dict[str, Any]]) -> str:
    """Format GPU utilisation and memory as a Markdown table; every cell is n/a on CPU."""
    header = ("| preset | loop | GPU utilisation (mean) | GPU memory used, peak (MiB) "
              "| CUDA max allocated (MiB) | GPU samples |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for s in summaries:
        rows.append(
            f"| {s['preset']} | {s['loop']} | {number(s['gpu_utilization_percent'], '.0f')}"
            f"{'' if s['gpu_utilization_percent'] is None else ' %'} "
            f"| {number(s['gpu_memory_used_peak_mib'], '.0f')} | {number(s['cuda_max_allocated_mib'], '.0f')} "
            f"| {number(s['gpu_samples'], 'd')} |"
        )
    return "\n".join(rows)


def target_checks(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check the two throughput targets on the target preset's trainer and model-only rows."""
    rows = {s["loop"]: s for s in summaries if s["preset"] == TARGET_PRESET}
    if "trainer" not in rows or "model only" not in rows:
        return []
    trainer, model_only = rows["trainer"], rows["model only"]
    # The padding share counts padded frames, which the model computes on like real ones, so it
    # stands for the share of step time spent on padding.
    wait, padding = trainer["data_wait_share"], trainer["padding_share"]
    # Wall throughput, so that trainer time outside its own step timer counts against it.
    trainer_speed = trainer["wall_audio_seconds_per_second"]
    model_speed = model_only["wall_audio_seconds_per_second"]
    return [
        {
            "name": "data-wait + padding share of step time",
            "value": wait + padding,
            "target": f"<= {MAX_WAIT_AND_PADDING_SHARE:.0%}",
            "format": ".2%",
            "passed": wait + padding <= MAX_WAIT_AND_PADDING_SHARE,
            "text": f"{wait + padding:.2%} ({wait:.2%} data wait + {padding:.2%} padding)",
        },
        {
            "name": "trainer throughput / model-only throughput",
            "value": trainer_speed / model_speed,
            "target": f">= {MIN_TRAINER_TO_MODEL_ONLY}",
            "format": ".3f",
            "passed": trainer_speed / model_speed >= MIN_TRAINER_TO_MODEL_ONLY,
            "text": f"{trainer_speed / model_speed:.3f} ({trainer_speed:.1f} / {model_speed:.1f} wall audio-s/s)",
        },
    ]


def print_report(summaries: list[dict[str, Any]], device_type: str, gpu_unavailable: str | None,
                 repeat_checks: list[list[dict[str, Any]]] = ()) -> None:
    """Print the tables, the notes and the target checks of LoopResult.summary() dictionaries.

    `repeat_checks` contains the target_checks() of each repeat, printed after the pooled verdicts.
    """
    print()
    print(format_table(summaries))
    print()
    print(format_gpu_table(summaries))
    if device_type == "cuda" and gpu_unavailable:
        print(f"GPU utilisation and memory used: n/a ({gpu_unavailable})")
    for s in summaries:
        for note in s["notes"]:
            print(f"- {s['preset']} {s['loop']}: {note}")
    print()
    checks = target_checks(summaries)
    if not checks:
        print(f"Targets: not checked, because the {TARGET_PRESET} preset's trainer and model-only loops "
              "were not measured (add it to --presets)")
    else:
        print(f"Targets on {TARGET_PRESET} ({device_type}, from the measured rows above):")
        for check in checks:
            verdict = "PASS" if check["passed"] else "FAIL"
            print(f"- {check['name']}: {check['text']}; target {check['target']}: {verdict}")
            per_repeat = [c["value"] for checks in repeat_checks for c in checks if c["name"] == check["name"]]
            if per_repeat:
                print(f"  per repeat: {', '.join(format(value, check['format']) for value in per_repeat)}")
