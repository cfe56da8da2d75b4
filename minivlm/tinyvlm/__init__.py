"""The tiny VLM minivlm trains from scratch on a CPU, and ships trained (docs/tiny_vlm.md).

- `data.py`: pictures of coloured shapes with their captions and questions, drawn from a seed, and the
  word-level tokenizer for their words (numpy and PIL only).
- `model.py`: the model (minivlm's LLaVA-NeXT at toy size), its processor, training batches, answers.
- `evaluate.py`: caption exact match and question accuracy on freshly drawn pictures.
- the training loop and the two-stage recipe: minivlm/train.py.

`shipped_folder()` is the trained checkpoint that comes with the package, a folder `minivlm generate`,
`minivlm.from_pretrained` and Transformers all read. Nothing heavy is imported here.
"""
from pathlib import Path

#: The trained tiny VLM's checkpoint folder, inside the installed package.
SHIPPED = Path(__file__).parent / "weights"


def shipped_folder() -> Path:
    """The folder of the trained tiny VLM that ships with minivlm (checked to be there)."""
    if not (SHIPPED / "model.safetensors").is_file():
        raise FileNotFoundError(f"the shipped tiny VLM is missing from {SHIPPED}: this minivlm was installed "
                                f"without its package data (reinstall it, or train one: minivlm train tiny-vlm "
                                f"--out DIR)")
    return SHIPPED
