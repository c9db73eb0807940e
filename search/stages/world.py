"""The offline demo world of a run config: built when missing, before any stage reads its models."""

from __future__ import annotations

from search.config import RunConfig

__all__ = ["ensure_world"]


def ensure_world(cfg: RunConfig, *, quiet: bool = False):
    """Build the config's demo world when it is missing (a quick no-op when complete); None without one."""
    if cfg.world is None:
        return None
    from demoworld.build import build_world

    return build_world(cfg.world.path, seed=cfg.world.seed, quiet=quiet, kind=cfg.world.kind)
