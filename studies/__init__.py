"""Research studies, apart from the speed scripts of `benchmarks/`.

Each module's docstring gives the question it answered, the answer in one or
two sentences, the docs/ section that records the figures, and its command
(`python -m studies.NAME`).
"""
