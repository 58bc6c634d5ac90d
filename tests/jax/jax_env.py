"""The environment of the processes the JAX tests start (the jax_checks script, servers, bench.gpu).

``JAX_THREEFRY_PARTITIONABLE=0``: Keras initialises every weight with ``jax.random`` (also when it
loads a ``.keras`` file: layers are built, then the saved weights assigned), and JAX compiles its
threefry generator once per weight shape. XLA on CPU compiles the partitionable form (JAX's default)
several times slower: in three of ``jax_checks.py``'s checks it took 82 of the 151 s of XLA compiles
on this 2-core machine, and 7 s with this flag (124 against 75 CPU-s for the three). The flag changes
only which random bits an initializer draws, and every check compares against references computed
from the same weights, so nothing a test proves depends on it.
"""

from __future__ import annotations

#: Added to the environment of every JAX process the tests start.
JAX_TEST_ENV = {"JAX_PLATFORMS": "cpu", "JAX_THREEFRY_PARTITIONABLE": "0"}
