"""SAE stage: activation shards in, a trained SAE (SAELens format), its training log and evaluation out."""
