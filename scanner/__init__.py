"""hfscan: find and defuse backdoors in fine-tuned Hugging Face models (classifiers, causal LMs, LoRA adapters).

The package reads as the pipeline it runs::

    sources/ -> stages/resolve -> stages/probe -> stages/assess -> stages/defend (defend.py, merge/)
        -> report/build -> report/render (templates/) -> publish

with everything model-specific behind `scanner.families.ModelFamily`. `scanner.pipeline.check` runs it end to
end; `hfscan` (scanner/cli.py) is the command line. See docs/architecture.md.
"""

__version__ = "0.5.0"
