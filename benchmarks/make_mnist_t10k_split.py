"""Make the real-MNIST folder of results/mnist-t10k: 8,000 train and 2,000 test digits.

The development machine has only the real MNIST test set (../shared/data/mnist-t10k); its
first 8,000 digits become the train split and the last 2,000 the test split (file order).

    python benchmarks/make_mnist_t10k_split.py ../shared/data/mnist-t10k data/mnist-8k-2k
    jrbench sweep benchmarks/mnist-t10k.toml          # reads data/mnist-8k-2k
"""
import sys
from pathlib import Path

from jrbench.data.datasets import split_test_set
from jrbench.errors import UserError

if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    try:
        out = split_test_set(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) == 4 else 8000)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"written: {out}")
