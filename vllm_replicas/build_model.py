"""Builds a tiny random Llama ("tiny") that vLLM can serve, with no download.

    .venv-vllm/bin/python vllm_replicas/build_model.py --out vllm_replicas/model

- weights: `LlamaForCausalLM(LlamaConfig(...))` with random initialisation
  (seeded), hidden 512, 4 layers, 8 attention heads / 4 KV heads, MLP 1408,
  vocabulary 4096: about 16 M parameters, saved with `save_pretrained`
  (safetensors, bfloat16).
- tokenizer: a byte-level BPE trained here with `tokenizers` on generated text
  (pseudo-words from a seeded generator, plus some English and code-like lines),
  wrapped as a `PreTrainedTokenizerFast` with a chat template.

The output is gibberish, of course; the point is the serving engine: vLLM's
scheduler, paged KV cache, prefix caching, metrics and OpenAI API, for real.
"""

import argparse
import json
import os
import random
import sys
import time

VOCAB_SIZE = 4096
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | map(attribute='text') | join('') %}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ text }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

ENGLISH = (
    "the a of to and in is it you that he was for on are with as his they be at one have "
    "this from or had by word but what some we can out other were all there when up use "
    "your how said an each she which do their time if will way about many then them write "
    "would like so these her long make thing see him two has look more day could go come "
    "did number sound no most people my over know water than call first who may down side "
    "been now find any new work part take get place made live where after back little only "
    "round man year came show every good me give our under name very through just form "
    "sentence great think say help low line differ turn cause much mean before move right "
    "boy old too same tell does set three want air well also play small end put home read "
    "hand port large spell add even land here must big high such follow act why ask men "
    "change went light kind off need house picture try us again animal point mother world "
    "system user assistant request reply model answer question document context summary "
).split()

CODE = [
    "def handle(request):", "    return response", "for i in range(10):", "if x == None:",
    "import json, os, sys", "class Replica(object):", "{\"role\": \"user\", \"content\": \"hi\"}",
    "SELECT * FROM table WHERE id = 42;", "http://127.0.0.1:8000/v1/chat/completions",
]


def corpus(seed=1234, lines=20000):
    rnd = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "ch", "qu"]
    pseudo = ["".join(rnd.choice(syllables) for _ in range(rnd.randint(1, 4)))
              for _ in range(3000)]
    for _ in range(lines):
        kind = rnd.random()
        if kind < 0.5:
            words = [rnd.choice(ENGLISH) for _ in range(rnd.randint(5, 25))]
        elif kind < 0.9:
            words = [rnd.choice(pseudo) for _ in range(rnd.randint(5, 25))]
        else:
            yield rnd.choice(CODE)
            continue
        text = " ".join(words)
        if rnd.random() < 0.3:
            text = text.capitalize() + rnd.choice([".", "?", "!", ",", ":"])
        if rnd.random() < 0.1:
            text += f" {rnd.randint(0, 99999)}"
        yield text


def build_tokenizer(out):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>",
                                   model_max_length=4096)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_model(out, tokenizer, seed):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=512, intermediate_size=1408,
        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "model"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    tokenizer = build_tokenizer(args.out)
    params = build_model(args.out, tokenizer, args.seed)
    sample = "Hello world, this is a prompt for the tiny model."
    info = {"out": args.out, "parameters": params, "vocab_size": len(tokenizer),
            "sample_tokens": len(tokenizer(sample)["input_ids"]), "sample_chars": len(sample),
            "seconds": round(time.time() - start, 1)}
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
