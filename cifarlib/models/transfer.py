"""ResNet18 transfer learning for report part 4."""
