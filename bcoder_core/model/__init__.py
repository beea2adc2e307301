"""bcoder_core.model: tokenizers (``tokenizer``), the B-Coder model (``qmodel.BCoderModel``) and T5
shapes / random checkpoints (``build``). Import the submodules; this package imports nothing heavy."""
