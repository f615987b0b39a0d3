"""GPT-2 models: the zoo, the shipped gpt2-tiny, its corpus and training."""
