"""Generator for notebooks/solutions/00_tokenizer_and_chat_format.ipynb."""

from solbuild import Exercise, build

EXERCISES = [
    Exercise("1. One BPE merge", "check_merge", "merge", r'''
def merge(symbols, pair):
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2  # both symbols are used up: merges never overlap
        else:
            out.append(symbols[i])
            i += 1
    return out
'''),
    Exercise("2. The chat template as text", "check_chat_template", "render", r'''
def render(messages, add_generation_prompt=False):
    text = "<|begin_of_text|>"
    for m in messages:
        text += f"<|start_header_id|>{m['role']}<|end_header_id|>\n{m['content']}<|end_of_text|>\n\n"
    if add_generation_prompt:
        text += "<|start_header_id|>assistant<|end_header_id|>\n"
    return text
'''),
    Exercise("3. The assistant-only mask", "check_assistant_mask", "assistant_mask", r'''
def assistant_mask(tokenizer, messages):
    def encode(text):
        return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True) if text else []

    ids, mask = [tokenizer.bos_token_id], [0]
    for m in messages:
        header = tokenizer.encode(f"<|start_header_id|>{m['role']}<|end_header_id|>\n", add_special_tokens=False)
        body = encode(m["content"]) + [tokenizer.eos_token_id]
        gap = encode("\n\n")
        trained = int(m["role"] == "assistant")
        ids += header + body + gap
        mask += [0] * len(header) + [trained] * len(body) + [0] * len(gap)
    return ids, mask
'''),
]

if __name__ == "__main__":
    print(build("00_tokenizer_and_chat_format.ipynb", "Lesson 00, the tokenizer and the chat format", EXERCISES))
