"""The papers' studies: recipes, the runner of seeded arms, pooled statistics with 95% intervals,
reports and figures, data mixing and merge sweeps."""
