"""``protocol=malicious``: malicious security with abort, SPDZ2k-style.

* ``ring``      exact Z_2^128 arithmetic on numpy uint64 limb pairs (the representation);
* ``dealer``    the dealer process: MAC key shares and authenticated tuples (Beaver
                triples, matmul triples, random bits for truncation pairs and
                comparisons, input/output masks), each with a companion for its check;
* ``engine``    authenticated shares, local linear ops, Beaver products, truncation,
                comparison/ReLU, openings, the checks of dealt tuples and the batched,
                hash-committed MAC check;
* ``cryptensor`` the authenticated share as a CrypTen tensor type, so the one trainer
                (``mpc.training``) and ``crypten.nn`` run on it;
* ``parts``     the suite's entries in the protocol registry (``conf/protocol/malicious.yaml``);

Only ``cryptensor`` imports CrypTen; the engine runs over the project's transport.
"""
