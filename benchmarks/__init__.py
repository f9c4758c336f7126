"""The benchmark's speed and recipe benchmarks; installed as ``peft_bench.benchmarks``. (The data recipes are
the datasets', in ``peft_bench/data/recipes/``.)"""
