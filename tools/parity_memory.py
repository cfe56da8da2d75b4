"""The peak memory of `minivlm parity` on a large synthetic checkpoint, against the size of its weights.

    python tools/parity_memory.py [--folder DIR] [--hidden 2048] [--layers 22] [--dtype float32]
    python tools/parity_memory.py --sparse --hidden 4096 --layers 32 --intermediate 11008   # a 7B's shape

Writes a random-weight Llama checkpoint (TinyLlama's shape by default: 1.1B parameters, 4.4 GB in
float32, in 1 GB shards with their index, as the hub stores large models) with a tokenizer, then runs
`minivlm parity DIR` in a fresh interpreter and reads the peak resident memory it reports. The two
libraries run one after the other, so the peak should be about one copy of the weights (plus the
interpreter, Transformers and the recorded stage outputs), not two. Needs Transformers.

--sparse writes the checkpoint as sparse files (valid headers, zero bytes that take no disk space) of
whatever size, to see the command refuse up front, with its estimate, a model whose weights exceed the
memory available (a 7B model in float32 is 25 GiB).
"""
import argparse
import json
import math
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_checkpoint(folder: Path, hidden: int, layers: int, intermediate: int, vocab: int, shard_bytes=2**30,
                     sparse: bool = False):
    """A Llama checkpoint of random float32 weights, written shard by shard (never all in memory); with
    sparse, each shard is a header followed by a hole of the tensors' size (read back as zeros)."""
    import torch
    from safetensors.torch import save_file

    from minivlm.tools import tiny_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizers.llama(folder / "tokenizer")
    for f in (folder / "tokenizer").iterdir():
        f.rename(folder / f.name)
    (folder / "tokenizer").rmdir()
    heads = hidden // 64
    config = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=hidden,
                  intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=max(1, heads // 8), vocab_size=vocab, max_position_embeddings=2048,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, dtype="float32",
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    kv = config["num_key_value_heads"] * 64
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                       p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (intermediate, hidden), p + "mlp.up_proj.weight": (intermediate, hidden),
                       p + "mlp.down_proj.weight": (hidden, intermediate),
                       p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,)})
    shards = split_into_shards(shapes, shard_bytes)
    weight_map, total = {}, 0
    g = torch.Generator().manual_seed(0)
    for k, shard in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        if sparse:
            total += write_sparse(folder / name, shard)
        else:           # one shard's random tensors at a time
            save_file({key: torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) * 0.02
                       for key, shape in shard.items()}, str(folder / name))
            total += sum(math.prod(shape) * 4 for shape in shard.values())
        weight_map.update({key: name for key in shard})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return total


def split_into_shards(shapes: dict, shard_bytes: int) -> list:
    """{name: shape} -> [{name: shape}, ...], each shard closed once it holds shard_bytes of float32."""
    shards, current, size = [], {}, 0
    for name, shape in shapes.items():
        current[name] = shape
        size += math.prod(shape) * 4
        if size >= shard_bytes:
            shards.append(current)
            current, size = {}, 0
    return shards + ([current] if current else [])


def write_sparse(file: Path, shard: dict) -> int:
    """The safetensors format by hand: 8 bytes of header length, the JSON header, then the tensors' bytes,
    here a hole (the file is extended with truncate, which allocates nothing). Returns the tensors' bytes."""
    header, offset = {}, 0
    for key, shape in shard.items():
        n = math.prod(shape) * 4
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    data = json.dumps(header).encode()
    data += b" " * (-len(data) % 8)
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(data)) + data)
        f.truncate(8 + len(data) + offset)
    return offset


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", help="where to write the checkpoint (default: a temporary folder)")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=22)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--sparse", action="store_true", help="zero weights in sparse files (no disk space)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="parity-memory-") as tmp:
        folder = Path(args.folder or Path(tmp) / "llama")
        start = time.time()
        total = write_checkpoint(folder, args.hidden, args.layers, args.intermediate, args.vocab, sparse=args.sparse)
        print(f"wrote {total / 2**30:.2f} GiB of float32 weights in {time.time() - start:.0f} s to {folder}")
        report = Path(tmp) / "report.json"
        start = time.time()
        run = subprocess.run([sys.executable, "-m", "minivlm", "parity", str(folder), "--dtype", args.dtype,
                              "--quiet", "--json", str(report)], capture_output=True, text=True)
        wall = time.time() - start
        print(run.stdout[-3000:], run.stderr[-3000:])
        if not report.exists():
            print(f"parity exited with {run.returncode} after {wall:.1f} s without a report")
            return
        data = json.loads(report.read_text())
        peak, weights = data["peak_rss_bytes"], data["model_bytes"]
        print(f"parity {'passed' if data['passed'] else 'FAILED'} in {wall:.0f} s; peak memory {peak / 2**30:.2f} GiB "
              f"= {peak / weights:.2f} x one copy of the weights in {args.dtype} ({weights / 2**30:.2f} GiB); "
              f"two copies would be {2 * weights / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
