"""The tools built on the library, apart from it: the `minivlm` command line (`cli`), the demo (`demo`) and
the benchmarks (`bench`). Nothing in the library imports them."""
