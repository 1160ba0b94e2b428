"""Write a tiny llama-architecture GGUF model with random weights, for tests.

    python tests/tools/make-tiny-gguf.py [OUTPUT] [--seed N]

The model is a real llama graph (2 blocks, 64-wide, 4 heads, SentencePiece-style vocabulary of
360 pieces with byte fallback), so a real llama-server loads it and answers completions in
well under a second on one CPU core. Its text is noise: it exists to prove that the server, the
unit, the port and the API key work, not to say anything sensible. About 0.5 MB, f32 weights.

Written with the `gguf` package from PyPI (pinned in requirements/dev.txt). The output is a pure
function of the seed, so repeated runs write byte-identical files (Ansible sees no change).
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

import numpy as np

import gguf

ARCH = "llama"
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
N_LAYER = 2
N_CTX_TRAIN = 2048
RMS_EPS = 1e-5

# A plain ChatML template, so /v1/chat/completions has something to render.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_vocab() -> tuple[list[str], list[float], list[int]]:
    """Return (pieces, scores, types) of a small SentencePiece ("llama") vocabulary."""
    tt = gguf.TokenType
    pieces: list[str] = ["<unk>", "<s>", "</s>"]
    types: list[int] = [tt.UNKNOWN, tt.CONTROL, tt.CONTROL]
    scores: list[float] = [0.0, 0.0, 0.0]
    # Byte fallback: llama.cpp looks up "<0x0A>" and friends by name, so all 256 must exist.
    for b in range(256):
        pieces.append(f"<0x{b:02X}>")
        types.append(tt.BYTE)
        scores.append(0.0)
    words = ["\u2581"]
    words += list(string.ascii_lowercase + string.ascii_uppercase + string.digits + ".,!?'-:")
    words += ["\u2581" + c for c in string.ascii_lowercase]
    words += ["\u2581the", "\u2581is", "\u2581hello", "\u2581world", "\u2581say"]
    # llama.cpp refuses a vocabulary with a piece listed twice.
    assert len(set(words)) == len(words), "duplicate vocabulary piece"
    for i, w in enumerate(words):
        pieces.append(w)
        types.append(tt.NORMAL)
        # Longer pieces score higher so the tokenizer prefers them, as in a trained vocabulary.
        scores.append(-100.0 + len(w) * 10.0 - i * 0.01)
    return pieces, scores, [int(t) for t in types]


def write_model(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pieces, scores, types = build_vocab()
    n_vocab = len(pieces)

    def weight(*shape: int) -> np.ndarray:
        # numpy shape is (rows, cols) = ggml's (ne1, ne0): llama.cpp wants ne0 = input width.
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def norm() -> np.ndarray:
        return np.ones(N_EMBD, dtype=np.float32)

    w = gguf.GGUFWriter(str(path), ARCH)
    w.add_name("gpufleet tiny test model")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    w.add_tensor("token_embd.weight", weight(n_vocab, N_EMBD))
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm())
        w.add_tensor(p + "attn_q.weight", weight(N_EMBD, N_EMBD))
        w.add_tensor(p + "attn_k.weight", weight(N_EMBD * N_HEAD_KV // N_HEAD, N_EMBD))
        w.add_tensor(p + "attn_v.weight", weight(N_EMBD * N_HEAD_KV // N_HEAD, N_EMBD))
        w.add_tensor(p + "attn_output.weight", weight(N_EMBD, N_EMBD))
        w.add_tensor(p + "ffn_norm.weight", norm())
        w.add_tensor(p + "ffn_gate.weight", weight(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_up.weight", weight(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_down.weight", weight(N_EMBD, N_FF))
    w.add_tensor("output_norm.weight", norm())
    w.add_tensor("output.weight", weight(n_vocab, N_EMBD))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output", nargs="?", default="tiny-llama.gguf", type=Path)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    write_model(tmp, args.seed)
    tmp.replace(args.output)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
