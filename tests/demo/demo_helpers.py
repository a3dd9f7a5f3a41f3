"""Settings that make a demo run take seconds on a tiny model."""

from restorelcc.demo import DemoConfig


def tiny_config(model, **overrides):
    settings = dict(
        model=str(model),
        calibration_samples=4,
        calibration_seqlen=32,
        train_pairs=12,
        probe_pairs=8,
        heads=3,
        batch_size=4,
        max_length=48,
        tasks=("arc_easy", "piqa"),
        limit=4,
        ppl_tokens=256,
        latency_rounds=1,
        progress=False,
    )
    settings.update(overrides)
    return DemoConfig(**settings)
