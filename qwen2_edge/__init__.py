"""qwen2-edge."""
