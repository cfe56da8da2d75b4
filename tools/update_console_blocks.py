"""Write the output of every ```console block of README.md and docs/*.md anew, by running its `$ minivlm`
commands in a temporary folder prepared as tests/test_console_blocks.py prepares it (which then checks
that the blocks stay true).

    python tools/update_console_blocks.py
"""
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_console_blocks import DOCS, FENCE, prepare  # noqa: E402


def run(command: str, cwd: pathlib.Path) -> str:
    argv = shlex.split(command)
    if argv[1] == "tiny":
        shutil.rmtree(cwd / argv[3], ignore_errors=True)
    done = subprocess.run([sys.executable, "-m", "minivlm", *argv[1:]], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command}: exit status {done.returncode}\n{done.stderr}")
    return done.stdout.rstrip("\n")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        cwd = prepare(pathlib.Path(tmp))
        for path in DOCS:
            text = path.read_text()

            def rewrite(match):
                lines = []
                for line in match.group(1).splitlines():
                    if line.startswith("$ "):
                        lines.append(line)
                        command = line[2:].split("  #")[0].strip()
                        if shlex.split(command)[0] == "minivlm":
                            lines += run(command, cwd).splitlines()
                return "```console\n" + "\n".join(lines) + "\n```"

            new = FENCE.sub(rewrite, text)
            if new != text:
                path.write_text(new)
                print(f"updated {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
