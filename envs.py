"""Lightweight offline text environments in the style of HotPotQA, ALFWorld and WebShop.

Each keeps its benchmark's interface, action language and scoring, and is generated from a seed,
so that a run needs no download. `make(name, split, seed, **options)` is the one entry point.
"""

# === hotpotqa ===
# === end hotpotqa ===

# === alfworld ===
# === end alfworld ===

# === webshop ===
# === end webshop ===


def make(name: str, split: str = "train", seed: int = 0, **options):
    """Build environment `name` ('hotpotqa', 'alfworld' or 'webshop') on the `split` tasks."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
    envs = {"hotpotqa": "HotpotQAEnv", "alfworld": "ALFWorldEnv", "webshop": "WebShopEnv"}
    if name not in envs:
        raise ValueError(f"unknown environment {name!r}: expected one of {sorted(envs)}")
    return globals()[envs[name]](split=split, seed=seed, **options)
