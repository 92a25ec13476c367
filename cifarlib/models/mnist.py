"""MNIST networks for report part 5 (LeNet-style main net and a smaller one)."""
