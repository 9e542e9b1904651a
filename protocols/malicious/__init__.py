"""``protocol=malicious``: malicious security with abort, SPDZ2k-style.

* ``ring``      exact Z_2^128 arithmetic on numpy uint64 limb pairs (the representation);
* ``dealer``    the dealer process: MAC key shares and authenticated tuples (Beaver
                triples, matmul triples, random bits for truncation pairs and
                comparisons, input/output masks), each with a companion for its check;
* ``engine``    authenticated shares, local linear ops, Beaver products, truncation,
                comparison/ReLU, openings, the checks of dealt tuples and the batched,
                hash-committed MAC check;
* ``train``     logistic regression and MLP training on authenticated shares;
* ``parts``     the suite's entries in the protocol registry (``conf/protocol/malicious.yaml``);

Nothing here imports CrypTen: the suite runs its own engine over the project's transport.
"""
