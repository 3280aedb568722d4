"""`python -m onnxslim`: the `onnxslim` command, for environments without scripts on PATH."""

from onnxslim.cli import main

if __name__ == "__main__":
    main()
