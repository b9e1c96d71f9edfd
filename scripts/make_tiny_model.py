"""Build a tiny random-weight Llama that vLLM's CPU build serves, with no hub access.

    python scripts/make_tiny_model.py OUT_DIR
    python scripts/make_tiny_model.py --check OUT_DIR   # exit 0 when OUT_DIR is built to SPEC

A fault test needs a real engine process tree, not sensible text: the weights are random and the
tokenizer is a byte-level BPE trained in a second on generated words. The shape is the smallest the
CPU attention backend accepts (head_dim 32: it supports 32, 64, 80, ... only). Runs in the engine's
venv (.venv-vllm), which has torch, transformers and tokenizers. Writes OUT_DIR/.complete last, so a
half-built model is rebuilt by the next `make vllm`.
"""
import random
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# The context is long enough for streams that stay open for seconds on a busy 2-core machine
# (examples/vllm-cpu/matrix.yaml asks 1,800 tokens past EOS): at 512 tokens a 400-token stream ended
# 2 s after it opened, and on CI its first byte arrived so late that the fault landed as it ended.
CONTEXT = 2048
# Written to OUT_DIR/.complete: a model built to another spec is rebuilt by the next `make vllm`.
SPEC = f"random-weight tiny llama, context {CONTEXT}; built by scripts/make_tiny_model.py"
SPECIALS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def training_text(lines=4000, seed=7):
    rnd = random.Random(seed)
    words = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 8)))
             for _ in range(600)]
    words += ["hello", "world", "the", "engine", "server", "fault", "request", "answer", "Hi"]
    for _ in range(lines):
        yield " ".join(rnd.choice(words) for _ in range(rnd.randint(3, 15))) + rnd.choice(".?!,")


def build_tokenizer(vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>", chat_template=CHAT_TEMPLATE,
                                   model_max_length=CONTEXT)


def build_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         head_dim=32, max_position_embeddings=CONTEXT, torch_dtype="bfloat16",
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config).to(torch.bfloat16)


def is_current(out: Path) -> bool:
    """Whether OUT holds a finished model of this script's SPEC (an older one is rebuilt)."""
    marker = out / ".complete"
    return marker.exists() and marker.read_text().strip() == SPEC


def main(argv):
    if len(argv) == 3 and argv[1] == "--check":
        return 0 if is_current(Path(argv[2])) else 1
    if len(argv) != 2:
        print("usage: make_tiny_model.py OUT_DIR | --check OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size=1024)
    tokenizer.save_pretrained(out)
    build_model(tokenizer).save_pretrained(out)
    (out / ".complete").write_text(SPEC + "\n")
    print(f"model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
