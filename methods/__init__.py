"""Methods of the benchmark, one module each. Every module here registers itself; see peft_bench.registry."""
