"""hfscan: find and defuse backdoors in fine-tuned Hugging Face classifiers.

The package reads as the pipeline it runs::

    resolve (hub.py) -> probe (probe/) -> merge (merge/) -> defend (defend.py)
        -> report (report/) -> render (templates/)

`scanner.pipeline.check` runs it end to end; `hfscan` (scanner/cli.py) is the command line.
"""

__version__ = "0.3.0"
