"""Methods of the benchmark, one module each, installed as ``peft_bench.methods``. Every module here registers
itself; see peft_bench.method_api.registry. Import one another relatively (``from .partial_ft import ...``)."""
