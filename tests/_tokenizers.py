"""The tests' tokenizers: minivlm.tools.tiny_tokenizers (a Llama BPE, OPT's byte-level BPE, T5's and XLM-R's
Unigrams, saved with Transformers' tokenizer classes)."""
from minivlm.tools.tiny_tokenizers import BUILDERS, CORPUS, TEXTS, llama, opt, t5, xlm_roberta

__all__ = ["BUILDERS", "CORPUS", "TEXTS", "llama", "opt", "t5", "xlm_roberta"]
