"""Tokenizers: `byte` (the default, vocab 256: one token per UTF-8 byte, as the seed's nano2)
and `gpt2` (tiktoken's GPT-2 BPE, vocab 50257). Each document is preceded by an
end-of-text token, as llm.c and nanoGPT prepare TinyStories, so the model learns where a
story starts."""
import numpy as np

from engine.errors import UserError

EOT_TEXT = "<|endoftext|>"


class ByteTokenizer:
    name = "byte"
    vocab_size = 256
    token_dtype = np.uint8
    # NUL never occurs in text, so it is free to mark where a document starts.
    eot = 0

    def encode(self, text):
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, tokens):
        """The text of the bytes; a token past them (a model's vocabulary padded beyond 256) reads
        as U+FFFD, as an invalid byte does (0xFF is never valid UTF-8)."""
        data = bytes(int(t) if t < 256 else 0xFF for t in tokens)
        return data.decode("utf-8", errors="replace").replace("\0", EOT_TEXT)


class GPT2Tokenizer:
    name = "gpt2"
    vocab_size = 50257
    token_dtype = np.uint16

    def __init__(self):
        import tiktoken
        try:
            self.encoding = tiktoken.get_encoding("gpt2")
        except Exception as e:  # tiktoken raises whatever its HTTP client raised
            raise UserError(
                f"the gpt2 tokenizer needs tiktoken's BPE files, which are not cached here and could "
                f"not be downloaded ({type(e).__name__}); copy a tiktoken cache from a machine with "
                f"network access and point TIKTOKEN_CACHE_DIR at it, or use --tokenizer=byte") from None
        self.eot = self.encoding.eot_token

    def encode(self, text):
        return np.asarray(self.encoding.encode_ordinary(text), dtype=np.uint16)

    def decode(self, tokens):
        return self.encoding.decode([int(t) for t in tokens])


TOKENIZERS = {"byte": ByteTokenizer, "gpt2": GPT2Tokenizer}


def get_tokenizer(name):
    """A tokenizer by a name the config has already checked against TOKENIZERS."""
    return TOKENIZERS[name]()
