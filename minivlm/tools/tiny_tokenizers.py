"""Small tokenizers for the tests, the benchmarks and the tutorials, trained on the spot with the
`tokenizers` library on a few sentences and saved with Transformers' own tokenizer classes (so the folders
hold what Transformers writes; Transformers is needed to build them, never to read them):

- `llama`: a Llama-style BPE with byte fallback (the 256 <0xNN> byte tokens; LLaVA-NeXT, IDEFICS);
- `opt`: a byte-level BPE as OPT's (GPT2Tokenizer, "</s>" as BOS; BLIP-2 with OPT);
- `t5`: a Unigram as T5's (T5Tokenizer, "</s>" after the text; BLIP-2 with Flan-T5);
- `xlm_roberta`: a Unigram as XLM-R's (XLMRobertaTokenizer, "<s> ... </s>"; AltCLIP, Kosmos-2).

Each builder takes a folder and returns the Transformers tokenizer it saved there.
"""
import json

CORPUS = [
    "A photo of a cat sitting on a red sofa.",
    "Two dogs play in the park, don't they?",
    "What is in the image? Describe it in detail.",
    "The quick brown fox jumps over the lazy dog 123 times!",
    "Café au lait, naïve façade: ünïcödé text.",
    "USER: What is shown here? ASSISTANT: a cat on a mat",
    "a picture of two birds flying over the sea at sunset",
] * 4

# Text the tests tokenize: spaces, tabs and newlines, digits, punctuation, non-Latin scripts (byte
# fallback), special tokens written in the text, and an empty string.
TEXTS = ["Hello world, café ü!", "  two  spaces\tand\nnewline 日本語 x", "", "<s>a</s>b<pad>",
         "don't . ,  ok ?", "a photo of a cat", "USER: What is shown here? ASSISTANT:"]


def _bpe_vocab(trained):
    spec = json.loads(trained.to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in spec["model"]["merges"]]
    return spec["model"]["vocab"], merges


def llama(folder, **options):
    """A Llama tokenizer (byte-fallback BPE, Metaspace) with <pad> and the given options."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        show_progress=False))
    vocab, merges = _bpe_vocab(bpe)
    tok = transformers.LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, **options)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(folder)
    return tok


def opt(folder, **options):
    """OPT's tokenizer: byte-level BPE, "</s>" as BOS, EOS and UNK, "<pad>" as the pad token."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab, merges = _bpe_vocab(bpe)
    tok = transformers.GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="</s>", eos_token="</s>",
                                     unk_token="</s>", pad_token="<pad>", add_bos_token=True, **options)
    tok.save_pretrained(folder)
    return tok


def _unigram_vocab(specials):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    uni = Tokenizer(models.Unigram())
    uni.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    uni.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=200, special_tokens=specials,
                                                            unk_token="<unk>", show_progress=False))
    vocab = [tuple(v) for v in json.loads(uni.to_str())["model"]["vocab"]]
    assert [piece for piece, _ in vocab[:len(specials)]] == specials, vocab[:len(specials)]
    # The trainer sums the scores in parallel, so their last bits (and with them the order of pieces of
    # equal score, i.e. the ids) change from run to run; rounded and sorted, the vocabulary is the same
    # every time, and so are the ids a tiny checkpoint's model is built for.
    pieces = sorted(((piece, round(score, 6)) for piece, score in vocab[len(specials):]), key=lambda v: (-v[1], v[0]))
    return vocab[:len(specials)] + pieces


def t5(folder, extra_ids=4, **options):
    """T5's tokenizer: Unigram with <pad>=0, </s>=1, <unk>=2 and `extra_ids` sentinel tokens."""
    import transformers

    vocab = _unigram_vocab(["<pad>", "</s>", "<unk>"])
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(extra_ids))]
    tok = transformers.T5Tokenizer(vocab=vocab, extra_ids=extra_ids, **options)
    tok.save_pretrained(folder)
    return tok


def xlm_roberta(folder, **options):
    """XLM-R's tokenizer: Unigram with <s>=0, <pad>=1, </s>=2, <unk>=3, then <mask> last."""
    import transformers

    vocab = _unigram_vocab(["<s>", "<pad>", "</s>", "<unk>"]) + [("<mask>", 0.0)]
    tok = transformers.XLMRobertaTokenizer(vocab=vocab, **options)
    tok.save_pretrained(folder)
    return tok


BUILDERS = {"llama": llama, "opt": opt, "t5": t5, "xlm_roberta": xlm_roberta}
