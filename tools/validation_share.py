"""How much of the library is argument checking: the share of non-blank lines that are raise blocks or
validators, per file and in all.

    python tools/validation_share.py [ROOT]        # ROOT: a checkout (default: this one)

Counted as validation: every line of a `raise` statement; the lines of an `if` (its condition and body)
whose body only raises; every line of a function whose name starts with `check`, `_check`, `validate` or
`_validate`. Counted over minivlm/models/*.py, generation/*.py, processing/*.py and loading.py (the library's
model code, not the kernels' argument checks in _checks.py, which are the ops' contract).
"""
import ast
import sys
from pathlib import Path

VALIDATOR_PREFIXES = ("check", "_check", "validate", "_validate")


def _only_raises(body) -> bool:
    return all(isinstance(s, ast.Raise) or (isinstance(s, ast.If) and _only_raises(s.body) and
                                            _only_raises(s.orelse)) for s in body)


def validation_lines(source: str) -> tuple[set, int]:
    """(the line numbers counted as validation, the number of non-blank lines) of one file."""
    lines = source.splitlines()
    nonblank = {i + 1 for i, text in enumerate(lines) if text.strip()}
    counted = set()
    for node in ast.walk(ast.parse(source)):
        span = None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(VALIDATOR_PREFIXES):
            span = (node.lineno, node.end_lineno)
        elif isinstance(node, ast.If) and _only_raises(node.body) and _only_raises(node.orelse):
            span = (node.lineno, node.end_lineno)
        elif isinstance(node, ast.Raise):
            span = (node.lineno, node.end_lineno)
        if span:
            counted.update(range(span[0], span[1] + 1))
    return counted & nonblank, len(nonblank)


def main(root: Path) -> None:
    pkg = root / "minivlm"
    files = (sorted((pkg / "models").glob("*.py")) + sorted((pkg / "processing").glob("*.py"))
             + sorted((pkg / "generation").glob("*.py")) + [pkg / "loading.py"])
    total_v = total_n = 0
    for f in files:
        v, n = validation_lines(f.read_text())
        total_v, total_n = total_v + len(v), total_n + n
        print(f"{str(f.relative_to(root)):34s} {len(v):5d} / {n:5d}  {100 * len(v) / max(n, 1):5.1f}%")
    print(f"{'all':34s} {total_v:5d} / {total_n:5d}  {100 * total_v / total_n:5.1f}%")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent))
