"""rapid: fast RL fine-tuning of small language models."""
