"""A sixth model added by following docs/adding_a_model.md alone: a one-layer causal language model on
minivlm's kernels. It is saved as a checkpoint folder (config.json + model.safetensors, the file's keys
spelled differently from the module's and the tied head left out), loaded by minivlm.from_pretrained,
run forward, and generates; each result is compared with the same math done another way."""
import json
from dataclasses import dataclass, fields

import torch
from safetensors.torch import save_file
from torch import nn

import minivlm
from minivlm import ops
from minivlm.models import register_model
from minivlm.models._common import ModelOutput
from minivlm.models.base import GenerativeModel
from minivlm.models.cache import KVCache


# ---- the model: what docs/adding_a_model.md asks for, and nothing else -------------------------------
@dataclass
class ToyConfig:
    vocab_size: int = 32       # V
    hidden_size: int = 16      # E
    num_heads: int = 2         # H; head width D = E / H

    @classmethod
    def from_dict(cls, d: dict) -> "ToyConfig":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class ToyForCausalLM(GenerativeModel):
    config_class = ToyConfig
    checkpoint_renames = [(r"^transformer\.", "")]      # the file says transformer.embed.weight, ...

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight                # tied: one parameter under two names

    def tied_weights(self):
        return {"head.weight": "embed.weight"}

    def new_cache(self, batch_size, max_length, *, dtype=None, device=None):
        c, w = self.config, self.embed.weight
        return KVCache(1, batch_size, c.num_heads, max_length, c.hidden_size // c.num_heads,
                       dtype=dtype or w.dtype, device=device or w.device)

    def forward(self, input_ids, *, attention_mask=None, position_ids=None, cache=None, logits_to_keep=0):
        x = self.embed(input_ids)                                                    # (B, T, E)
        B, T, E = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.config.num_heads, -1).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(0, k, v)                                             # (B, H, S, D)
        mask = None if attention_mask is None else ops.causal_mask(attention_mask, T, dtype=x.dtype)
        o = ops.attention(q, k, v, mask, is_causal=mask is None)                     # (B, H, T, D)
        x = x + o.transpose(1, 2).reshape(B, T, E)
        return ModelOutput(logits=self.head(x[:, -logits_to_keep:] if logits_to_keep else x))


# ---- the test ----------------------------------------------------------------------------------------
def test_a_sixth_model_loads_runs_and_generates(tmp_path):
    register_model("toy", ToyForCausalLM)
    torch.manual_seed(0)
    built = ToyForCausalLM(ToyConfig(vocab_size=40)).eval()
    tensors = {f"transformer.{k}": v for k, v in built.state_dict().items() if k != "head.weight"}
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "toy", "vocab_size": 40}))

    model = minivlm.from_pretrained(tmp_path)
    assert isinstance(model, ToyForCausalLM) and model.config.vocab_size == 40
    assert model.head.weight is model.embed.weight
    ids = torch.randint(0, 40, (2, 7))
    # The same parameters in the same float32 ops: the loaded model's logits equal the built one's.
    torch.testing.assert_close(model(ids).logits, built(ids).logits, rtol=0, atol=0)

    # generate (greedy, with the cache; no eos id, so all 5 steps run) = the argmax of a full forward over
    # the growing sequence at each step.
    tokens = model.generate(ids, max_new_tokens=5)
    assert tokens.shape == (2, 12) and torch.equal(tokens[:, :7], ids)
    expected = ids
    for _ in range(5):
        expected = torch.cat([expected, model(expected).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(tokens, expected)
