"""grpo_vqa: GRPO training of vision-language models for visual question answering.

The Snakemake workflow in ``workflow/`` calls thin scripts in ``scripts/``; all logic lives here.
"""

__version__ = "0.1.0"
