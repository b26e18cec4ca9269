"""The cost of the penalty: interleaved step timing, memory, budgets, the CI gate."""
