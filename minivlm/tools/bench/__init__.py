"""`minivlm bench`: the kernels on the CPU (`kernels`) and on a GPU (`cuda`), whole models against
Transformers (`models`), and the fresh-process peak-memory probe they share (`memory`)."""
