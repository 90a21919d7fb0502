"""The demo pipeline's stage defaults, in one place for the pipeline, the experiment and the benches.

Sized for the demo world on 2 CPU cores; the layer, dump variant, agreement threshold and
SFT epochs were chosen on the validation world (seed 1000), never on the reported ones
(bench/RESULTS.md). Real runs pass their own.
"""

DEMO_SAE = {"architecture": "topk", "k": 16, "expansion_factor": 8, "batch_size": 1024, "total_tokens": 4_000_000}
DEMO_DUMP = {"include_response": True}
DEMO_ALIGN = {"method": "sft", "epochs": 4}
