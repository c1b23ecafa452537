"""fa2bench: how fast is attention on my GPU, and why? Built around FlashAttention-2 (Dao, 2023)."""
__version__ = "0.1.0"
